//! Prefixed, time-ordered identifiers (`ses_…`, `turn_…`, `apr_…`, `key_…`, `bud_…`).
//!
//! Ids are UUIDv7 in simple hex form behind a short prefix, so they sort by
//! creation time, which cursor pagination relies on.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! prefixed_id {
    ($name:ident, $prefix:literal, $doc:literal) => {
        #[doc = $doc]
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// The prefix every id of this kind starts with.
            pub const PREFIX: &'static str = $prefix;

            /// A fresh, time-ordered id.
            pub fn generate() -> Self {
                Self(format!("{}{}", $prefix, uuid::Uuid::now_v7().simple()))
            }

            /// Parses an id received from a client; `None` if it is malformed.
            pub fn parse(raw: &str) -> Option<Self> {
                let rest = raw.strip_prefix($prefix)?;
                let ok = rest.len() == 32 && rest.bytes().all(|b| b.is_ascii_hexdigit());
                ok.then(|| Self(raw.to_owned()))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

prefixed_id!(SessionId, "ses_", "Identifies one session.");
prefixed_id!(TurnId, "turn_", "Identifies one turn of a session.");
prefixed_id!(ApprovalId, "apr_", "Identifies one human approval request.");
prefixed_id!(KeyId, "key_", "Identifies one API key.");
prefixed_id!(BudgetId, "bud_", "Identifies one budget.");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_and_sort_by_time() {
        let a = SessionId::generate();
        let b = SessionId::generate();
        assert_eq!(SessionId::parse(a.as_str()), Some(a.clone()));
        assert!(a < b);
        assert_eq!(SessionId::parse("ses_nothex"), None);
        assert_eq!(SessionId::parse(TurnId::generate().as_str()), None);
    }
}
