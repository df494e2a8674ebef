pub mod admin;
pub mod devices;
pub mod epic_env;
pub mod gateway;
pub mod gateway_admin;
pub mod kiosk;
pub mod ops;
pub mod telehealth;
pub mod telehealth_admin;

/// A file download: `body` as `media_type`, saved as `filename` (reduced to letters, digits,
/// `.`, `-` and `_` so it cannot break out of the header).
pub(crate) fn attachment(
    media_type: &str,
    filename: &str,
    body: String,
) -> axum::response::Response {
    use axum::http::header;
    use axum::response::IntoResponse;
    let safe: String = filename
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    (
        [
            (header::CONTENT_TYPE, media_type.to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{safe}\""),
            ),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_attachment_name_cannot_break_out_of_its_header() {
        let r = super::attachment("text/plain", "a\"; x=\r\n.xml", String::new());
        assert_eq!(
            r.headers()["content-disposition"],
            "attachment; filename=\"a___x___.xml\""
        );
    }
}
