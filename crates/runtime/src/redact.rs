//! What a read-only caller may not see. The gateway asserts each caller's role to the services
//! (`x-zentra-role`); a viewer's answers carry payment tokens masked and no dead-letter payloads.
//! A call without the assertion came from inside the platform (the orchestrator) and sees all.

use tonic::metadata::MetadataMap;

use crate::audit::Role;

/// Whether the gateway asserted a read-only caller for this request.
pub fn for_viewer(metadata: &MetadataMap) -> bool {
    Role::asserted(metadata) == Some(Role::Viewer)
}

/// A secret shown by its last four characters only ("••••4242"); short ones not at all.
pub fn mask(secret: &str) -> String {
    let count = secret.chars().count();
    if count <= 8 {
        return "••••".to_owned();
    }
    let tail: String = secret.chars().skip(count - 4).collect();
    format!("••••{tail}")
}

/// An e-mail address shown by its first character and its domain ("a•••@example.com").
pub fn mask_email(address: &str) -> String {
    match address.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}•••@{domain}")
        }
        None if address.is_empty() => String::new(),
        None => "•••".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use tonic::metadata::MetadataValue;

    use super::*;
    use crate::audit::ROLE_METADATA;

    #[test]
    fn only_a_caller_asserted_as_viewer_is_one() {
        let mut metadata = MetadataMap::new();
        assert!(!for_viewer(&metadata));
        metadata.insert(ROLE_METADATA, MetadataValue::from_static("viewer"));
        assert!(for_viewer(&metadata));
        metadata.insert(ROLE_METADATA, MetadataValue::from_static("operator"));
        assert!(!for_viewer(&metadata));
    }

    #[test]
    fn masks_keep_at_most_the_last_four_characters() {
        assert_eq!(mask("tok_visa_4242"), "••••4242");
        assert_eq!(mask("tok_ok"), "••••");
        assert_eq!(mask(""), "••••");
        assert_eq!(mask_email("ada@example.com"), "a•••@example.com");
        assert_eq!(mask_email(""), "");
    }
}
