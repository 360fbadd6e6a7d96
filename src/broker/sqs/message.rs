//! Turning an [`OutboxEvent`] into an SQS batch entry: the message contract (body, message
//! attributes within SQS's limit of 10, FIFO group and dedupe IDs) and SQS's size accounting.

use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};

use crate::{broker::PublishError, event::OutboxEvent};

/// SQS allows at most this many message attributes.
pub const MAX_ATTRIBUTES: usize = 10;

/// Attributes every message carries (all of type String but `seq`, see [`data_type`]); the
/// row's headers get the remaining `MAX_ATTRIBUTES - 5` slots.
const FIXED: [&str; 5] = [
    "event_id",
    "event_type",
    "aggregate_type",
    "aggregate_id",
    "seq",
];

/// The SQS data type of attribute `name`: `Number` for `seq` (the event's write order, so
/// consumers can tell stale versions), `String` for everything else.
pub fn data_type(name: &str) -> &'static str {
    if name == "seq" { "Number" } else { "String" }
}

/// Headers that get an attribute slot before any other header (tracing must get through).
const PRIORITY_HEADERS: [&str; 2] = ["traceparent", "tracestate"];

/// A built entry and its size as SQS counts it.
#[derive(Debug)]
pub struct Entry {
    /// The request entry.
    pub entry: SendMessageBatchRequestEntry,
    /// Body plus attribute names, types and values, in bytes.
    pub size: usize,
}

/// Whether `name` is a valid SQS message attribute name.
pub fn valid_attribute_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    !name.is_empty()
        && name.len() <= 256
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !name.starts_with('.')
        && !name.ends_with('.')
        && !name.contains("..")
        && !lower.starts_with("aws.")
        && !lower.starts_with("amazon.")
}

/// Whether SQS accepts `text` as a message body or attribute value: only `#x9`, `#xA`,
/// `#xD`, `#x20`-`#xD7FF`, `#xE000`-`#xFFFD` and `#x10000`-`#x10FFFF` are allowed. Returns
/// the first offending character otherwise.
pub fn invalid_char(text: &str) -> Option<char> {
    text.chars().find(|c| {
        !matches!(*c as u32,
            0x9 | 0xA | 0xD | 0x20..=0xD7FF | 0xE000..=0xFFFD | 0x10000..=0x10FFFF)
    })
}

/// The attributes for `event`, in priority order: the five fixed ones, then `traceparent`
/// and `tracestate`, then the other headers by name, up to [`MAX_ATTRIBUTES`]. Headers with
/// invalid names, empty values or characters SQS does not accept (SQS would refuse the
/// message), headers named like a fixed attribute, and headers beyond the limit are left out
/// and returned as `dropped`.
pub fn attributes(event: &OutboxEvent) -> (Vec<(String, String)>, Vec<String>) {
    let mut out: Vec<(String, String)> = Vec::with_capacity(MAX_ATTRIBUTES);
    for (name, value) in FIXED.iter().zip([
        event.id.to_string(),
        event.event_type.clone(),
        event.aggregate_type.clone(),
        event.aggregate_id.clone(),
        event.seq.to_string(),
    ]) {
        if !value.is_empty() {
            out.push(((*name).to_owned(), value));
        }
    }
    let mut headers: Vec<&(String, String)> = event.headers.iter().collect();
    headers.sort_by_key(|(k, _)| {
        (
            PRIORITY_HEADERS
                .iter()
                .position(|p| p == k)
                .unwrap_or(PRIORITY_HEADERS.len()),
            k.clone(),
        )
    });
    let mut dropped = Vec::new();
    for (name, value) in headers {
        if out.len() < MAX_ATTRIBUTES
            && !FIXED.contains(&name.as_str())
            && valid_attribute_name(name)
            && !value.is_empty()
            && invalid_char(value).is_none()
        {
            out.push((name.clone(), value.clone()));
        } else {
            dropped.push(name.clone());
        }
    }
    (out, dropped)
}

/// Whether `id` is a valid FIFO `MessageGroupId` (1-128 printable ASCII characters).
pub fn valid_group_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.chars().all(|c| c.is_ascii_graphic())
}

/// Builds the batch entry `id` for `event`, or the permanent error that makes it unsendable.
pub fn build(
    event: &OutboxEvent,
    id: usize,
    fifo: bool,
    max_bytes: usize,
) -> Result<Entry, PublishError> {
    if let Some(c) = invalid_char(&event.payload) {
        return Err(PublishError::Rejected(format!(
            "payload contains {c:?} (U+{:04X}), which SQS does not accept in a message body",
            c as u32
        )));
    }
    let (attrs, dropped) = attributes(event);
    // Only fixed attributes can fail here: headers with such characters were dropped.
    if let Some((name, c)) = attrs
        .iter()
        .find_map(|(k, v)| invalid_char(v).map(|c| (k, c)))
    {
        return Err(PublishError::Rejected(format!(
            "{name} contains {c:?} (U+{:04X}), which SQS does not accept in an attribute",
            c as u32
        )));
    }
    if !dropped.is_empty() {
        tracing::debug!(
            event_id = %event.id,
            dropped = ?dropped,
            "headers not sent as SQS attributes (over the limit of 10, invalid name, \
             empty value, invalid characters, or named like a fixed attribute)"
        );
    }
    let size = event.payload.len()
        + attrs
            .iter()
            .map(|(k, v)| k.len() + data_type(k).len() + v.len())
            .sum::<usize>();
    if size > max_bytes {
        return Err(PublishError::TooLarge {
            size,
            limit: max_bytes,
        });
    }
    let mut builder = SendMessageBatchRequestEntry::builder()
        .id(id.to_string())
        .message_body(event.payload.clone());
    for (name, value) in attrs {
        let value = MessageAttributeValue::builder()
            .data_type(data_type(&name))
            .string_value(value)
            .build()
            .map_err(|e| PublishError::Rejected(e.to_string()))?;
        builder = builder.message_attributes(name, value);
    }
    if fifo {
        if !valid_group_id(&event.aggregate_id) {
            return Err(PublishError::Rejected(format!(
                "aggregate_id `{}` cannot be a FIFO MessageGroupId (1-128 printable ASCII characters)",
                event.aggregate_id
            )));
        }
        builder = builder
            .message_group_id(event.aggregate_id.clone())
            .message_deduplication_id(event.id.to_string());
    }
    let entry = builder
        .build()
        .map_err(|e| PublishError::Rejected(e.to_string()))?;
    Ok(Entry { entry, size })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(headers: Vec<(&str, &str)>) -> OutboxEvent {
        OutboxEvent {
            payload: "{\"a\":1}".into(),
            headers: headers
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            ..OutboxEvent::fixture()
        }
    }

    #[test]
    fn traceparent_always_gets_a_slot_and_the_rest_is_capped() {
        let mut headers: Vec<(String, String)> = (0..12)
            .map(|i| (format!("a{i:02}"), "v".to_owned()))
            .collect();
        headers.push(("traceparent".into(), "00-abc-def-01".into()));
        let mut e = event(vec![]);
        e.headers = headers;
        let (attrs, dropped) = attributes(&e);
        assert_eq!(attrs.len(), MAX_ATTRIBUTES);
        let names: Vec<&str> = attrs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            &names[..7],
            &[
                "event_id",
                "event_type",
                "aggregate_type",
                "aggregate_id",
                "seq",
                "traceparent",
                "a00"
            ]
        );
        // Five slots for headers: traceparent and a00..a03.
        assert_eq!(dropped.len(), 8);
        assert_eq!(dropped[0], "a04");
    }

    #[test]
    fn invalid_names_and_empty_values_are_dropped() {
        let (attrs, dropped) = attributes(&event(vec![
            ("AWS.trace", "x"),
            ("bad name", "x"),
            ("empty", ""),
            ("ok-name.v1", "x"),
        ]));
        assert!(attrs.iter().any(|(k, _)| k == "ok-name.v1"));
        assert_eq!(dropped.len(), 3);
    }

    #[test]
    fn characters_sqs_refuses_drop_a_header_but_reject_a_payload() {
        assert_eq!(invalid_char("tab\tnewline\n é 😀"), None);
        assert_eq!(invalid_char("a\u{1}b"), Some('\u{1}'));
        assert_eq!(invalid_char("\u{FFFE}"), Some('\u{FFFE}'));

        let (attrs, dropped) = attributes(&event(vec![("bell", "\u{7}"), ("fine", "x")]));
        assert!(attrs.iter().any(|(k, _)| k == "fine"));
        assert_eq!(dropped, vec!["bell".to_owned()]);

        let mut e = event(vec![]);
        e.payload = "{\"a\":\"\u{FFFF}\"}".into();
        let err = build(&e, 0, false, 1 << 20).unwrap_err();
        assert!(
            matches!(&err, PublishError::Rejected(r) if r.contains("U+FFFF")),
            "{err:?}"
        );
        let mut e = event(vec![]);
        e.aggregate_id = "a\u{0}".into();
        let err = build(&e, 0, false, 1 << 20).unwrap_err();
        assert!(
            matches!(&err, PublishError::Rejected(r) if r.starts_with("aggregate_id")),
            "{err:?}"
        );
    }

    #[test]
    fn headers_named_like_fixed_attributes_are_dropped_not_duplicated() {
        let (attrs, dropped) = attributes(&event(vec![("event_id", "spoofed")]));
        assert_eq!(attrs.iter().filter(|(k, _)| k == "event_id").count(), 1);
        assert_ne!(attrs[0].1, "spoofed");
        assert_eq!(dropped, vec!["event_id".to_owned()]);
    }

    #[test]
    fn seq_is_a_number_attribute_and_a_header_cannot_replace_it() {
        let mut e = event(vec![("seq", "1"), ("tenant", "acme")]);
        e.seq = 9_007_199_254_740_993;
        let entry = build(&e, 0, false, 1 << 20).unwrap().entry;
        let attrs = entry.message_attributes().unwrap();
        assert_eq!(attrs["seq"].data_type(), "Number");
        assert_eq!(attrs["seq"].string_value(), Some("9007199254740993"));
        assert_eq!(attrs["tenant"].data_type(), "String");
        let (_, dropped) = attributes(&e);
        assert_eq!(dropped, vec!["seq".to_owned()]);
    }

    #[test]
    fn oversized_event_reports_by_how_much() {
        let mut e = event(vec![]);
        e.payload = "x".repeat(2000);
        let err = build(&e, 0, false, 1000).unwrap_err();
        let PublishError::TooLarge { size, limit } = err.clone() else {
            panic!("{err:?}")
        };
        assert!(size > 2000 && limit == 1000);
        assert!(err.to_string().contains("over"), "{err}");
    }

    #[test]
    fn fifo_entries_carry_group_and_dedupe_ids() {
        let entry = build(&event(vec![]), 3, true, 1 << 20).unwrap().entry;
        assert_eq!(entry.id(), "3");
        assert_eq!(entry.message_group_id(), Some("42"));
        assert_eq!(
            entry.message_deduplication_id(),
            Some("00000000-0000-0000-0000-000000000000")
        );
        let mut e = event(vec![]);
        e.aggregate_id = "x".repeat(129);
        assert!(matches!(
            build(&e, 0, true, 1 << 20),
            Err(PublishError::Rejected(_))
        ));
    }
}
