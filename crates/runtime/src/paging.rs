//! Page sizes and opaque page tokens for list RPCs.

use zentra_proto::common::v1::PageRequest;

use crate::status::Violations;

/// Page size when the request leaves it at 0.
pub const DEFAULT_PAGE_SIZE: u64 = 50;
/// Largest page size allowed.
pub const MAX_PAGE_SIZE: u64 = 500;

/// A validated page request: how many, and after which key (the last key of the previous page).
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// Items wanted.
    pub size: u64,
    /// The cursor: the last key of the previous page, if any.
    pub after: Option<String>,
}

impl Page {
    /// Validates a `PageRequest` (absent means the first page of the default size).
    pub fn parse(request: Option<&PageRequest>, violations: &mut Violations) -> Self {
        let Some(request) = request else {
            return Self {
                size: DEFAULT_PAGE_SIZE,
                after: None,
            };
        };
        let size = match request.page_size {
            0 => DEFAULT_PAGE_SIZE,
            size if size < 0 => {
                violations.add("page.page_size", "must not be negative");
                DEFAULT_PAGE_SIZE
            }
            size if size as u64 > MAX_PAGE_SIZE => {
                violations.add("page.page_size", format!("must be at most {MAX_PAGE_SIZE}"));
                DEFAULT_PAGE_SIZE
            }
            size => size as u64,
        };
        let after = if request.page_token.is_empty() {
            None
        } else {
            match decode_token(&request.page_token) {
                Some(cursor) => Some(cursor),
                None => {
                    violations.add("page.page_token", "is not a token this service issued");
                    None
                }
            }
        };
        Self { size, after }
    }
}

impl Page {
    /// The cursor as a UUID, for lists keyed by time-ordered ids; records a violation when the
    /// token holds something else.
    pub fn uuid_cursor(&self, violations: &mut Violations) -> Option<uuid::Uuid> {
        let cursor = self.after.as_deref()?;
        match uuid::Uuid::parse_str(cursor) {
            Ok(id) => Some(id),
            Err(_) => {
                violations.add("page.page_token", "is not a token this service issued");
                None
            }
        }
    }

    /// Trims the one extra row a list fetched (`size + 1`) and returns the next page's token,
    /// empty when this was the last page.
    pub fn finish<T>(&self, rows: &mut Vec<T>, cursor: impl Fn(&T) -> String) -> String {
        if rows.len() as u64 <= self.size {
            return String::new();
        }
        rows.truncate(self.size as usize);
        rows.last()
            .map(|row| encode_token(&cursor(row)))
            .unwrap_or_default()
    }
}

/// Encodes a cursor as an opaque token.
pub fn encode_token(cursor: &str) -> String {
    let mut token = String::with_capacity(3 + cursor.len() * 2);
    token.push_str("pt1");
    for byte in cursor.bytes() {
        token.push_str(&format!("{byte:02x}"));
    }
    token
}

fn decode_token(token: &str) -> Option<String> {
    let hex = token.strip_prefix("pt1")?;
    if hex.len() % 2 != 0 || hex.len() > 512 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?)
        .ok()
        .filter(|cursor| !cursor.chars().any(char::is_control))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_foreign_tokens_are_refused() {
        let mut violations = Violations::new();
        let page = Page::parse(
            Some(&PageRequest {
                page_size: 10,
                page_token: encode_token("SKU-9"),
            }),
            &mut violations,
        );
        assert!(violations.is_empty());
        assert_eq!(page.after.as_deref(), Some("SKU-9"));
        Page::parse(
            Some(&PageRequest {
                page_size: 501,
                page_token: "pt100".to_owned(),
            }),
            &mut violations,
        );
        let fields: Vec<_> = violations.fields().map(|(field, _)| field).collect();
        assert_eq!(fields, ["page.page_size", "page.page_token"]);
    }
}
