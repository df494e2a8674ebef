//! FHIR path classification and scope parsing: never panic, and a classified path never holds
//! a traversal or an encoded separator.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_domain::gateway::{FhirRequest, classify, parse_scopes};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_scopes(text);
    for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
        if let Some(FhirRequest::Resource { resource, id, .. }) = classify(method, text) {
            assert!(!text.contains("..") && !text.contains('%'), "{text:?}");
            assert!(resource.chars().all(|c| c.is_ascii_alphanumeric()));
            assert!(id.is_none_or(|i| !i.contains('/')));
        }
    }
});
