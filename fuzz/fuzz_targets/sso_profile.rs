//! SSO profile parser: never panics on any input; a tree it accepts exports to XML that reads
//! back as the same tree, and exporting again gives the same bytes; a profile it accepts keeps
//! its apps through the round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_domain::sso::{parse_profile, parse_tree, to_xml};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(tree) = parse_tree(text) {
        let xml = to_xml(&tree);
        let back = parse_tree(&xml).expect("an exported tree parses");
        assert_eq!(back, tree, "export changed the tree: {xml}");
        assert_eq!(to_xml(&back), xml, "export is not stable");
    }
    if let Ok(profile) = parse_profile(text) {
        let again = parse_profile(&to_xml(&profile.tree)).expect("an exported profile imports");
        assert_eq!(again, profile);
    }
});
