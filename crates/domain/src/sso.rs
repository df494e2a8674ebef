//! SSO credential profiles, the `<SSO>` XML a mobile-access manager uses to autofill sign-in
//! forms. Switchboard reads what it needs (each app's `nm`, `desc` and its USR / PWD controls)
//! and keeps everything else exactly as it came: elements, attributes in their order, values.
//!
//! Hostile input is refused before anything is kept: DOCTYPE and entity declarations, processing
//! instructions, documents over 64 KiB, nesting deeper than 16, more than 2,000 elements.

use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};
use serde::Serialize;

pub const MAX_BYTES: usize = 64 * 1024;
pub const MAX_DEPTH: usize = 16;
pub const MAX_ELEMENTS: usize = 2_000;

/// A profile with the structure of the example in the product's source material: Epic Rover,
/// one-tap autofill for `epic.com` on iOS (the demo seeds it; tests start from it).
pub const EXAMPLE_PROFILE: &str = r#"<SSO>
    <global verCreate="6.0" verLastMod="6.0"/>
        <app nm="epic.com" desc="Epic Rover" profileType="2" appType="0">
            <env type="200" nm="iOS">
                <scn nm="" auto="0" dgs="1">
                    <ctl var="USR"/>
                    <ctl var="PWD"/>
                </scn>
            </env>
        </app>
    <containers/>
</SSO>"#;

/// One XML element: name, attributes in document order, children and text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Element {
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Element>,
    pub text: String,
}

impl Element {
    #[must_use]
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn descendants<'a>(&'a self, name: &'a str) -> Box<dyn Iterator<Item = &'a Element> + 'a> {
        Box::new(self.children.iter().flat_map(move |c| {
            std::iter::once(c)
                .filter(move |c| c.name == name)
                .chain(c.descendants(name))
        }))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    #[error("the profile is larger than {MAX_BYTES} bytes")]
    TooLarge,
    #[error("the profile nests elements deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("the profile has more than {MAX_ELEMENTS} elements")]
    TooManyElements,
    #[error("DOCTYPE and entity declarations are not accepted in a profile")]
    Doctype,
    #[error("processing instructions are not accepted in a profile")]
    ProcessingInstruction,
    #[error("the XML is malformed: {0}")]
    Malformed(String),
    #[error("the root element must be <SSO>, not <{0}>")]
    WrongRoot(String),
    #[error("the profile defines no <app>")]
    NoApp,
    #[error("app `{0}`: nm must be an associated domain (like epic.com) or equal desc")]
    BadName(String),
    #[error(
        "app `{0}`: needs an <env> with a <scn> holding both <ctl var=\"USR\"/> and <ctl var=\"PWD\"/>"
    )]
    MissingControls(String),
}

/// An XML name: a letter, `_` or `:` (or any non-ASCII character), then also digits, `-` and `.`.
fn xml_name(raw: &[u8], what: &str) -> Result<String, ProfileError> {
    let name = String::from_utf8_lossy(raw).into_owned();
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_' || c == ':' || !c.is_ascii())
        && chars
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | ':' | '-' | '.') || !c.is_ascii());
    if ok {
        Ok(name)
    } else {
        Err(ProfileError::Malformed(format!(
            "`{name}` is not a valid {what} name"
        )))
    }
}

/// Refuses characters XML 1.0 does not allow (control characters other than tab, line feed and
/// carriage return; U+FFFE and U+FFFF), even when written as character references.
fn checked_chars(s: &str) -> Result<&str, ProfileError> {
    match s.chars().find(|c| {
        (c.is_control() && !matches!(c, '\t' | '\n' | '\r' | '\u{7f}'..='\u{9f}'))
            || matches!(c, '\u{fffe}' | '\u{ffff}')
    }) {
        Some(c) => Err(ProfileError::Malformed(format!(
            "the character U+{:04X} is not allowed in XML",
            u32::from(c)
        ))),
        None => Ok(s),
    }
}

fn element(e: &BytesStart<'_>) -> Result<Element, ProfileError> {
    Ok(Element {
        name: xml_name(e.name().as_ref(), "element")?,
        attrs: attrs_of(e)?,
        children: Vec::new(),
        text: String::new(),
    })
}

fn attrs_of(e: &BytesStart<'_>) -> Result<Vec<(String, String)>, ProfileError> {
    e.attributes()
        .map(|a| {
            let a = a.map_err(|err| ProfileError::Malformed(err.to_string()))?;
            let key = xml_name(a.key.as_ref(), "attribute")?;
            let value = a
                .unescape_value()
                .map_err(|err| ProfileError::Malformed(err.to_string()))?
                .into_owned();
            checked_chars(&value)?;
            Ok((key, value))
        })
        .collect()
}

/// Parses with the limits above into an element tree.
pub fn parse_tree(xml: &str) -> Result<Element, ProfileError> {
    if xml.len() > MAX_BYTES {
        return Err(ProfileError::TooLarge);
    }
    let mut reader = Reader::from_str(xml);
    reader.config_mut().trim_text(true);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut count = 0usize;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| ProfileError::Malformed(e.to_string()))?;
        match event {
            Event::DocType(_) => return Err(ProfileError::Doctype),
            Event::PI(_) => return Err(ProfileError::ProcessingInstruction),
            Event::Start(e) | Event::Empty(e) if root.is_some() => {
                let _ = e;
                return Err(ProfileError::Malformed(
                    "content after the root element".to_owned(),
                ));
            }
            Event::Start(e) => {
                count += 1;
                if count > MAX_ELEMENTS {
                    return Err(ProfileError::TooManyElements);
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(ProfileError::TooDeep);
                }
                stack.push(element(&e)?);
            }
            Event::Empty(e) => {
                count += 1;
                if count > MAX_ELEMENTS {
                    return Err(ProfileError::TooManyElements);
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(ProfileError::TooDeep);
                }
                let el = element(&e)?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => root = Some(el),
                }
            }
            Event::End(_) => {
                let mut el = stack
                    .pop()
                    .ok_or_else(|| ProfileError::Malformed("unbalanced end tag".to_owned()))?;
                // Text around child elements is layout: kept without its outer whitespace.
                el.text = checked_chars(el.text.trim())?.to_owned();
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => root = Some(el),
                }
            }
            Event::Text(t) => {
                let text = t
                    .unescape()
                    .map_err(|e| ProfileError::Malformed(e.to_string()))?;
                match stack.last_mut() {
                    Some(el) => el.text.push_str(&text),
                    None if text.trim().is_empty() => {}
                    None => {
                        return Err(ProfileError::Malformed(
                            "text outside the root element".to_owned(),
                        ));
                    }
                }
            }
            Event::CData(c) => {
                if let Some(el) = stack.last_mut() {
                    el.text.push_str(&String::from_utf8_lossy(&c));
                }
            }
            Event::Decl(_) | Event::Comment(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(ProfileError::Malformed(
            "the document ends inside an element".to_owned(),
        ));
    }
    root.ok_or_else(|| ProfileError::Malformed("no root element".to_owned()))
}

fn is_domain(s: &str) -> bool {
    let labels: Vec<&str> = s.split('.').collect();
    labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
        && labels
            .last()
            .is_some_and(|t| t.chars().all(|c| c.is_ascii_alphabetic()))
}

/// One app a profile covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProfileApp {
    /// The associated domain (one-tap autofill) or the display name.
    pub nm: String,
    pub desc: String,
    /// True when `nm` is a domain: the device can offer one-tap autofill for it.
    pub one_tap: bool,
}

/// A validated profile: the tree (kept exactly) and what Switchboard reads from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Profile {
    pub tree: Element,
    pub apps: Vec<ProfileApp>,
}

pub fn parse_profile(xml: &str) -> Result<Profile, ProfileError> {
    let tree = parse_tree(xml)?;
    if tree.name != "SSO" {
        return Err(ProfileError::WrongRoot(tree.name));
    }
    let mut apps = Vec::new();
    for app in tree.descendants("app") {
        let nm = app.attr("nm").unwrap_or_default().to_owned();
        let desc = app.attr("desc").unwrap_or_default().to_owned();
        let one_tap = is_domain(&nm);
        if !(one_tap || (!nm.is_empty() && nm == desc)) {
            return Err(ProfileError::BadName(if nm.is_empty() { desc } else { nm }));
        }
        let has_controls = app.descendants("scn").any(|scn| {
            let vars: Vec<&str> = scn
                .descendants("ctl")
                .filter_map(|c| c.attr("var"))
                .collect();
            vars.contains(&"USR") && vars.contains(&"PWD")
        });
        if !has_controls {
            return Err(ProfileError::MissingControls(nm));
        }
        apps.push(ProfileApp { nm, desc, one_tap });
    }
    if apps.is_empty() {
        return Err(ProfileError::NoApp);
    }
    Ok(Profile { tree, apps })
}

/// Escapes markup and the whitespace an XML reader would otherwise normalise (tab, line feed
/// and carriage return in attribute values, carriage return in text).
fn escape(s: &str, in_attribute: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\r' => out.push_str("&#13;"),
            '\t' if in_attribute => out.push_str("&#9;"),
            '\n' if in_attribute => out.push_str("&#10;"),
            c => out.push(c),
        }
    }
    out
}

fn write(el: &Element, depth: usize, out: &mut String) {
    let pad = "    ".repeat(depth);
    out.push_str(&pad);
    out.push('<');
    out.push_str(&el.name);
    for (k, v) in &el.attrs {
        out.push_str(&format!(" {k}=\"{}\"", escape(v, true)));
    }
    if el.children.is_empty() && el.text.is_empty() {
        out.push_str("/>\n");
        return;
    }
    out.push('>');
    if el.children.is_empty() {
        out.push_str(&escape(&el.text, false));
    } else {
        out.push('\n');
        if !el.text.is_empty() {
            out.push_str(&format!("{pad}    {}\n", escape(&el.text, false)));
        }
        for c in &el.children {
            write(c, depth + 1, out);
        }
        out.push_str(&pad);
    }
    out.push_str(&format!("</{}>\n", el.name));
}

/// Writes the tree back: same elements, attributes (in order) and values.
#[must_use]
pub fn to_xml(tree: &Element) -> String {
    let mut out = String::new();
    write(tree, 0, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EXAMPLE: &str = EXAMPLE_PROFILE;

    #[test]
    fn the_example_profile_imports_and_round_trips_exactly() {
        let p = parse_profile(EXAMPLE).unwrap();
        assert_eq!(
            p.apps,
            vec![ProfileApp {
                nm: "epic.com".into(),
                desc: "Epic Rover".into(),
                one_tap: true
            }]
        );
        let out = to_xml(&p.tree);
        assert_eq!(
            parse_tree(&out).unwrap(),
            p.tree,
            "same elements, attributes and values"
        );
        let scn = p.tree.descendants("scn").next().unwrap();
        assert_eq!(
            scn.attrs,
            vec![
                ("nm".into(), String::new()),
                ("auto".into(), "0".into()),
                ("dgs".into(), "1".into())
            ],
            "attributes kept in order, empty ones too"
        );
        assert_eq!(to_xml(&parse_tree(&out).unwrap()), out, "export is stable");
    }

    #[test]
    fn hostile_or_broken_profiles_are_refused_with_a_reason() {
        type Expect = fn(&ProfileError) -> bool;
        let cases: Vec<(String, Expect)> = vec![
            (
                format!("<!DOCTYPE SSO [<!ENTITY x \"y\">]>{EXAMPLE}"),
                |e| matches!(e, ProfileError::Doctype),
            ),
            ("<?php evil ?><SSO/>".to_owned(), |e| {
                matches!(e, ProfileError::ProcessingInstruction)
            }),
            (
                format!("<SSO>{}</SSO>", "<a>".repeat(20) + &"</a>".repeat(20)),
                |e| matches!(e, ProfileError::TooDeep),
            ),
            (
                format!("<SSO>{}</SSO>", "<x/>".repeat(MAX_ELEMENTS + 1)),
                |e| matches!(e, ProfileError::TooManyElements | ProfileError::TooLarge),
            ),
            (format!("<SSO>{}</SSO>", " ".repeat(MAX_BYTES)), |e| {
                matches!(e, ProfileError::TooLarge)
            }),
            (EXAMPLE.replace(r#"<ctl var="PWD"/>"#, ""), |e| {
                matches!(e, ProfileError::MissingControls(_))
            }),
            (
                EXAMPLE.replace(r#"nm="epic.com""#, r#"nm="not a domain""#),
                |e| matches!(e, ProfileError::BadName(_)),
            ),
            ("<Profile/>".to_owned(), |e| {
                matches!(e, ProfileError::WrongRoot(_))
            }),
            ("<SSO><global/></SSO>".to_owned(), |e| {
                matches!(e, ProfileError::NoApp)
            }),
            ("<SSO><app>".to_owned(), |e| {
                matches!(e, ProfileError::Malformed(_))
            }),
            ("<SSO>&xxe;</SSO>".to_owned(), |e| {
                matches!(e, ProfileError::Malformed(_))
            }),
            ("< />".to_owned(), |e| {
                matches!(e, ProfileError::Malformed(_))
            }),
            ("<SSO a=\"&#1;\"/>".to_owned(), |e| {
                matches!(e, ProfileError::Malformed(_))
            }),
            ("<SSO>x\u{0}y</SSO>".to_owned(), |e| {
                matches!(e, ProfileError::Malformed(_))
            }),
            ("<\r\r/>".to_owned(), |e| {
                matches!(e, ProfileError::Malformed(_))
            }),
            ("<SSO 1a=\"x\"/>".to_owned(), |e| {
                matches!(e, ProfileError::Malformed(_))
            }),
        ];
        for (xml, expected) in cases {
            let err = parse_profile(&xml).unwrap_err();
            assert!(expected(&err), "{err:?} for {}", &xml[..xml.len().min(60)]);
        }
    }

    #[test]
    fn an_app_named_by_its_description_is_accepted_without_one_tap() {
        let xml = EXAMPLE.replace(r#"nm="epic.com""#, r#"nm="Epic Rover""#);
        let p = parse_profile(&xml).unwrap();
        assert!(!p.apps[0].one_tap);
    }

    /// Element and attribute names as XML allows them (no namespaces).
    fn name() -> impl Strategy<Value = String> {
        "[A-Za-z_][A-Za-z0-9_.-]{0,10}"
    }

    /// Values with markup characters, quotes, whitespace and non-ASCII text.
    fn value() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9 &<>\"'=/;:\t\r\né€日本-]{0,20}"
    }

    /// Text as the reader keeps it: no leading or trailing whitespace.
    fn text() -> impl Strategy<Value = String> {
        value().prop_map(|t| t.trim().to_owned())
    }

    fn attrs() -> impl Strategy<Value = Vec<(String, String)>> {
        prop::collection::btree_map(name(), value(), 0..4)
            .prop_flat_map(|m| Just(m.into_iter().collect::<Vec<_>>()).prop_shuffle())
    }

    fn element() -> impl Strategy<Value = Element> {
        let leaf = (name(), attrs(), text()).prop_map(|(name, attrs, text)| Element {
            name,
            attrs,
            children: Vec::new(),
            text,
        });
        leaf.prop_recursive(4, 40, 5, |inner| {
            (name(), attrs(), text(), prop::collection::vec(inner, 0..5)).prop_map(
                |(name, attrs, text, children)| Element {
                    name,
                    attrs,
                    children,
                    text,
                },
            )
        })
    }

    fn domain() -> impl Strategy<Value = String> {
        "[a-z0-9]{1,10}(\\.[a-z0-9][a-z0-9-]{0,8}[a-z0-9]){0,2}\\.[a-z]{2,6}"
    }

    fn leaf(name: &str, attrs: &[(&str, &str)], children: Vec<Element>) -> Element {
        Element {
            name: name.into(),
            attrs: attrs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            children,
            text: String::new(),
        }
    }

    /// A valid `<app>`: a domain name (one tap) or nm equal to desc, with extra attributes and
    /// elements Switchboard does not read.
    fn app() -> impl Strategy<Value = (Element, ProfileApp)> {
        (
            prop_oneof![domain(), "[A-Za-z][A-Za-z ]{0,12}"],
            "[A-Za-z][A-Za-z &]{0,12}",
            any::<bool>(),
            prop::collection::vec(element(), 0..3),
        )
            .prop_map(|(nm, desc, extra_attr, extra)| {
                let one_tap = is_domain(&nm);
                let desc = if one_tap { desc } else { nm.clone() };
                let scn = leaf(
                    "scn",
                    &[("nm", ""), ("auto", "0")],
                    vec![
                        leaf("ctl", &[("var", "USR")], Vec::new()),
                        leaf("ctl", &[("var", "PWD")], Vec::new()),
                    ],
                );
                let env = leaf("env", &[("type", "200"), ("nm", "iOS")], vec![scn]);
                let mut attrs = vec![("nm", nm.as_str()), ("desc", desc.as_str())];
                if extra_attr {
                    attrs.push(("profileType", "2"));
                }
                let mut children = vec![env];
                children.extend(extra.into_iter().filter(|e| {
                    e.name != "app" && e.name != "scn" && e.descendants("app").next().is_none()
                }));
                let el = leaf("app", &attrs, children);
                (el, ProfileApp { nm, desc, one_tap })
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any tree Switchboard writes reads back as the same tree, and writing it again gives
        /// the same bytes.
        #[test]
        fn any_tree_round_trips(tree in element()) {
            let xml = to_xml(&tree);
            let back = parse_tree(&xml).map_err(|e| TestCaseError::fail(format!("{e}: {xml}")))?;
            prop_assert_eq!(&back, &tree);
            prop_assert_eq!(to_xml(&back), xml);
        }

        /// Generated profiles import with the apps they define, and their export imports to the
        /// same tree and apps.
        #[test]
        fn generated_profiles_import_and_export_exactly(
            apps in prop::collection::vec(app(), 1..4),
            global in attrs(),
        ) {
            let mut children = vec![Element {
                name: "global".into(),
                attrs: global,
                children: Vec::new(),
                text: String::new(),
            }];
            children.extend(apps.iter().map(|(e, _)| e.clone()));
            let tree = Element { name: "SSO".into(), attrs: Vec::new(), children, text: String::new() };
            let xml = to_xml(&tree);
            let p = parse_profile(&xml).map_err(|e| TestCaseError::fail(format!("{e}: {xml}")))?;
            prop_assert_eq!(&p.tree, &tree);
            let expected: Vec<ProfileApp> = apps.into_iter().map(|(_, a)| a).collect();
            prop_assert_eq!(&p.apps, &expected);
            let again = parse_profile(&to_xml(&p.tree)).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(again, p);
        }

        /// Whatever the input, the parser answers (a tree or a reason) without panicking, and a
        /// tree it accepts survives export.
        #[test]
        fn arbitrary_input_never_panics(xml in "(<[a-zA-Z/!?]{0,3}[ a-z=\"'&;<>]{0,12}>?){0,12}") {
            if let Ok(tree) = parse_tree(&xml) {
                prop_assert_eq!(parse_tree(&to_xml(&tree)).ok(), Some(tree));
            }
        }
    }

    #[test]
    fn values_with_markup_characters_survive_the_round_trip() {
        let xml = EXAMPLE.replace(
            r#"desc="Epic Rover""#,
            r#"desc="Rover &amp; &quot;Haiku&quot; &lt;test&gt;""#,
        );
        let p = parse_profile(&xml).unwrap();
        assert_eq!(p.apps[0].desc, r#"Rover & "Haiku" <test>"#);
        assert_eq!(parse_tree(&to_xml(&p.tree)).unwrap(), p.tree);
    }
}
