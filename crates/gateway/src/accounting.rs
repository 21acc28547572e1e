//! Token counts from the upstream's `usage`, local estimates when it sent none, and cost.

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::Price;

/// The tokens of one call.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Tokens {
    pub input: u64,
    pub output: u64,
    /// Part of `input` served from the provider's prompt cache.
    pub cached: u64,
}

impl Tokens {
    /// USD for these tokens at `price` (per million tokens).
    pub fn cost(&self, price: &Price) -> f64 {
        price.cost(&agentrt_types::Usage { input_tokens: self.input, output_tokens: self.output, cached_tokens: self.cached })
    }
}

/// Chat Completions `usage`.
#[derive(Deserialize)]
pub(crate) struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<PromptTokensDetails>,
}

#[derive(Deserialize)]
struct PromptTokensDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

impl From<WireUsage> for Tokens {
    fn from(u: WireUsage) -> Tokens {
        let cached = u.prompt_tokens_details.and_then(|d| d.cached_tokens).unwrap_or(0);
        Tokens { input: u.prompt_tokens, output: u.completion_tokens, cached }
    }
}

/// The `usage` of a non-streamed answer, if it has a usable one.
pub(crate) fn usage_of(body: &Value) -> Option<Tokens> {
    let usage = body.get("usage").filter(|u| u.is_object())?;
    WireUsage::deserialize(usage).ok().map(Tokens::from)
}

/// Roughly four characters per token: the estimate for answers without `usage`. Rounds up,
/// so any text counts for at least one token.
pub(crate) fn chars_to_tokens(chars: u64) -> u64 {
    chars.div_ceil(4)
}

/// Estimated prompt tokens: the characters of the messages' contents (strings, or the `text`
/// of content parts).
pub(crate) fn estimate_input(request: &Map<String, Value>) -> u64 {
    let messages = request.get("messages").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
    let chars = messages
        .iter()
        .map(|m| match m.get("content") {
            Some(Value::String(s)) => char_count(s),
            Some(Value::Array(parts)) => parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).map(char_count).sum(),
            _ => 0,
        })
        .sum();
    chars_to_tokens(chars)
}

/// Estimated completion tokens of a non-streamed answer: the characters of every choice's
/// content and tool call arguments.
pub(crate) fn estimate_output(answer: &Value) -> u64 {
    let choices = answer.get("choices").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
    let mut chars = 0;
    for message in choices.iter().filter_map(|c| c.get("message")) {
        chars += message.get("content").and_then(Value::as_str).map_or(0, char_count);
        let calls = message.get("tool_calls").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
        chars += calls.iter().filter_map(|c| c.pointer("/function/arguments").and_then(Value::as_str)).map(char_count).sum::<u64>();
    }
    chars_to_tokens(chars)
}

fn char_count(s: &str) -> u64 {
    s.chars().count() as u64
}

/// The characters of a JSON string, counted while deserializing without keeping the text.
/// Anything else (null, numbers, arrays, objects) counts as 0 rather than failing, so an odd
/// field cannot hide the `usage` in the same chunk.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Chars(pub u64);

impl<'de> Deserialize<'de> for Chars {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Chars, D::Error> {
        struct CountChars;
        impl<'de> Visitor<'de> for CountChars {
            type Value = Chars;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Chars, E> {
                Ok(Chars(char_count(s)))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Chars, E> {
                Ok(Chars(0))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Chars, E> {
                Ok(Chars(0))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Chars, E> {
                Ok(Chars(0))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Chars, E> {
                Ok(Chars(0))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Chars, E> {
                Ok(Chars(0))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Chars, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Chars(0))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Chars, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Chars(0))
            }
        }
        deserializer.deserialize_any(CountChars)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn cost_charges_cached_input_at_its_own_price() {
        let price = Price { input: 2.0, output: 8.0, cached_input: 0.5 };
        let tokens = Tokens { input: 1_000_000, output: 500_000, cached: 400_000 };
        assert!((tokens.cost(&price) - (0.6 * 2.0 + 0.4 * 0.5 + 0.5 * 8.0)).abs() < 1e-12);
        // A cached count above the input (a confused upstream) is not charged twice.
        let odd = Tokens { input: 10, output: 0, cached: 20 };
        assert!((odd.cost(&price) - 10.0 * 0.5 / 1e6).abs() < 1e-15);
    }

    #[test]
    fn estimates_count_contents_parts_and_tool_arguments() {
        let request = json!({"messages": [
            {"role": "system", "content": "abcd"},
            {"role": "user", "content": [{"type": "text", "text": "éé"}, {"type": "image_url", "image_url": {"url": "x"}}]},
            {"role": "assistant", "content": null}
        ]});
        assert_eq!(estimate_input(request.as_object().expect("object")), 2); // 6 chars
        let answer = json!({"choices": [{"message": {"content": "hi", "tool_calls": [
            {"function": {"name": "f", "arguments": "{\"a\":1}"}}
        ]}}]});
        assert_eq!(estimate_output(&answer), 3); // 2 + 7 chars
        assert_eq!(estimate_output(&json!({"choices": []})), 0);
    }

    #[test]
    fn usage_reads_cached_tokens_and_ignores_null() {
        let body = json!({"usage": {"prompt_tokens": 10, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 4}}});
        assert_eq!(usage_of(&body), Some(Tokens { input: 10, output: 3, cached: 4 }));
        assert_eq!(usage_of(&json!({"usage": null})), None);
        assert_eq!(usage_of(&json!({})), None);
    }
}
