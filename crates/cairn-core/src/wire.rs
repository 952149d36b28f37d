//! Deserializers for wire enums whose derived ones answer bad input badly.
//!
//! serde_json's derived enum reading answers a unit enum given a number or an
//! array, and an externally tagged enum given an object with a second key,
//! with only "expected value" (its `ExpectedSomeValue`), and names a struct
//! variant by its Rust path (`Selector::Template`). The reading here names what
//! was expected in wire terms. It is written by hand (serde has no attribute
//! for either), and kept to what the two shapes need.

use serde::de::{Error, MapAccess};

/// Gives a unit-only enum, derived with `#[serde(remote = "Self")]` (which
/// makes the derived `serialize` and `deserialize` inherent functions), the
/// `Serialize` and `Deserialize` impls that call them, reading only a
/// string: any other JSON type is refused as "invalid type: ..., expected"
/// `$expecting`, and an unknown string by the derived reading's "unknown
/// variant" message, which lists the names.
macro_rules! string_enum {
    ($ty:ident, $expecting:literal) => {
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
                $ty::serialize(self, serializer)
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
                struct Name;
                impl<'de> serde::de::Visitor<'de> for Name {
                    type Value = $ty;

                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str($expecting)
                    }

                    fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<$ty, E> {
                        $ty::deserialize(serde::de::IntoDeserializer::<E>::into_deserializer(v))
                    }
                }
                deserializer.deserialize_str(Name)
            }
        }
    };
}

pub(crate) use string_enum;

/// Reads the key of an externally tagged enum's object form: `what` names
/// the enum for the message when the object is empty.
pub(crate) fn variant_key<'de, A: MapAccess<'de>>(
    map: &mut A,
    what: &str,
    variants: &'static [&'static str],
) -> Result<String, A::Error> {
    match map.next_key::<String>()? {
        Some(key) => Ok(key),
        None => Err(A::Error::custom(format!(
            "{what} object needs one key, one of {}",
            variants.iter().map(|v| format!("`{v}`")).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// Refuses a second key after an externally tagged enum's one key and value.
pub(crate) fn no_second_key<'de, A: MapAccess<'de>>(mut map: A, what: &str, key: &str) -> Result<(), A::Error> {
    match map.next_key::<String>()? {
        None => Ok(()),
        Some(other) => Err(A::Error::custom(format!(
            "{what} is an object of one key: `{key}` and `{other}` were both given"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::events::{DedupeKey, Selector};
    use crate::model::{ChildrenMode, Disposition, TerminalState};
    use crate::schedule::Overlap;

    fn refusal<T: serde::de::DeserializeOwned + std::fmt::Debug>(text: &str) -> String {
        serde_json::from_str::<T>(text).expect_err(text).to_string()
    }

    #[test]
    fn a_selector_with_a_second_key_names_both() {
        let message = refusal::<Selector>(r#"{"pointer": "/a", "extra": 1}"#);
        assert!(message.contains("one key: `pointer` and `extra`"), "{message}");
        let message = refusal::<DedupeKey>(r#"{"const": "k", "selector": "payload"}"#);
        assert!(message.contains("one key: `const` and `selector`"), "{message}");
    }

    #[test]
    fn a_selector_of_the_wrong_type_says_what_a_selector_is() {
        for text in ["7", "[]", "true", "{}"] {
            let message = refusal::<Selector>(text);
            assert!(
                message.contains("one key, one of `payload`, `pointer`"),
                "{text}: {message}"
            );
            assert!(!message.contains("expected value"), "{text}: {message}");
        }
        let message = refusal::<Selector>(r#""pointer""#);
        assert!(
            message.contains(r#"takes a value: write it as {"pointer": ...}"#),
            "{message}"
        );
        let message = refusal::<Selector>(r#"{"bogus": 1}"#);
        assert!(message.contains("unknown variant `bogus`"), "{message}");
    }

    #[test]
    fn a_template_is_read_strictly_and_named_in_wire_terms() {
        let message = refusal::<Selector>(r#"{"template": "x"}"#);
        assert!(
            message.contains("expected a template: an object with `template`"),
            "{message}"
        );
        assert!(!message.contains("Selector::"), "{message}");
        let message = refusal::<Selector>(r#"{"template": {"template": "x", "fields": {}, "extra": 1}}"#);
        assert!(message.contains("unknown field `extra`"), "{message}");
        let message = refusal::<Selector>(r#"{"template": {"template": "{a}", "fields": {"a": 7}}}"#);
        assert!(message.contains("expected a selector"), "{message}");
    }

    #[test]
    fn every_selector_and_dedupe_key_reads_back_what_it_writes() {
        let template = Selector::Template {
            template: "{a}-{b}".into(),
            fields: [
                ("a".to_string(), Selector::Pointer("/x".into())),
                ("b".to_string(), Selector::Payload),
            ]
            .into_iter()
            .collect(),
        };
        for selector in [
            Selector::Payload,
            Selector::Pointer("/a".into()),
            Selector::Const(json!({"k": [1, null]})),
            Selector::Present("/b".into()),
            template.clone(),
        ] {
            let text = serde_json::to_string(&selector).unwrap();
            assert_eq!(serde_json::from_str::<Selector>(&text).unwrap(), selector, "{text}");
        }
        for key in [
            DedupeKey::EventIdentity,
            DedupeKey::Const("k".into()),
            DedupeKey::Selector(template),
        ] {
            let text = serde_json::to_string(&key).unwrap();
            assert_eq!(serde_json::from_str::<DedupeKey>(&text).unwrap(), key, "{text}");
        }
        // The object form of a unit variant, which the derived reading took, still reads.
        assert_eq!(
            serde_json::from_value::<Selector>(json!({"payload": null})).unwrap(),
            Selector::Payload
        );
        assert_eq!(
            serde_json::from_value::<DedupeKey>(json!({"event_identity": null})).unwrap(),
            DedupeKey::EventIdentity
        );
    }

    #[test]
    fn a_unit_enum_given_another_type_names_what_it_wanted() {
        let message = refusal::<Disposition>("7");
        assert!(
            message.contains("invalid type: integer `7`, expected a disposition: `rerunnable`"),
            "{message}"
        );
        let message = refusal::<TerminalState>("[1]");
        assert!(message.contains("expected a terminal state"), "{message}");
        let message = refusal::<ChildrenMode>("{}");
        assert!(message.contains("expected a children mode"), "{message}");
        let message = refusal::<Overlap>("null");
        assert!(message.contains("expected an overlap policy"), "{message}");
        let message = refusal::<Disposition>(r#""sometimes""#);
        assert!(
            message.contains("unknown variant `sometimes`, expected one of"),
            "{message}"
        );
        for value in [
            Disposition::Rerunnable,
            Disposition::OwnerBound,
            Disposition::ExternallyOwned,
        ] {
            let text = serde_json::to_string(&value).unwrap();
            assert_eq!(text, format!("\"{}\"", value.label()));
            assert_eq!(serde_json::from_str::<Disposition>(&text).unwrap(), value);
        }
        assert_eq!(
            serde_json::from_value::<Overlap>(json!("allow")).unwrap(),
            Overlap::Allow
        );
        assert_eq!(
            serde_json::from_value::<ChildrenMode>(json!("any")).unwrap(),
            ChildrenMode::Any
        );
    }
}
