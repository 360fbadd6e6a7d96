//! Routing-key templates: `{aggregate_type}.{event_type}` and friends, parsed once at start-up
//! so a typo is a config error, not a runtime surprise.

use crate::event::OutboxEvent;

/// A template placeholder that does not exist, or unbalanced braces.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TemplateError {
    /// `{name}` is not one of the known fields.
    #[error(
        "unknown placeholder `{{{0}}}`; use {{aggregate_type}}, {{aggregate_id}} or {{event_type}}"
    )]
    UnknownPlaceholder(String),
    /// A `{` without `}` or the reverse.
    #[error("unbalanced `{{` or `}}` in template")]
    Unbalanced,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Literal(String),
    AggregateType,
    AggregateId,
    EventType,
}

/// A parsed routing template (`broker.rabbitmq.routing_key`: parsed when the configuration
/// loads).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RoutingTemplate {
    /// The template as written, shown by `outbox-relay config`.
    source: String,
    parts: Vec<Part>,
}

impl TryFrom<String> for RoutingTemplate {
    type Error = TemplateError;

    fn try_from(raw: String) -> Result<Self, TemplateError> {
        Self::parse(&raw)
    }
}

impl From<RoutingTemplate> for String {
    fn from(template: RoutingTemplate) -> String {
        template.source
    }
}

impl RoutingTemplate {
    /// Parses a template; placeholders are `{aggregate_type}`, `{aggregate_id}`, `{event_type}`.
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = template;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                None => {
                    parts.push(Part::Literal(rest.to_owned()));
                    break;
                }
                Some(i) if rest.as_bytes()[i] == b'}' => return Err(TemplateError::Unbalanced),
                Some(i) => {
                    if i > 0 {
                        parts.push(Part::Literal(rest[..i].to_owned()));
                    }
                    let close = rest[i..].find('}').ok_or(TemplateError::Unbalanced)? + i;
                    let name = &rest[i + 1..close];
                    parts.push(match name {
                        "aggregate_type" => Part::AggregateType,
                        "aggregate_id" => Part::AggregateId,
                        "event_type" => Part::EventType,
                        other if other.contains('{') => return Err(TemplateError::Unbalanced),
                        other => return Err(TemplateError::UnknownPlaceholder(other.to_owned())),
                    });
                    rest = &rest[close + 1..];
                }
            }
        }
        Ok(Self {
            source: template.to_owned(),
            parts,
        })
    }

    /// Renders the template for one event.
    pub fn render(&self, event: &OutboxEvent) -> String {
        let mut out = String::new();
        for part in &self.parts {
            out.push_str(match part {
                Part::Literal(s) => s,
                Part::AggregateType => &event.aggregate_type,
                Part::AggregateId => &event.aggregate_id,
                Part::EventType => &event.event_type,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> OutboxEvent {
        OutboxEvent::fixture()
    }

    #[test]
    fn renders_placeholders_and_literals() {
        let t = RoutingTemplate::parse("app.{aggregate_type}.{event_type}.{aggregate_id}").unwrap();
        assert_eq!(t.render(&event()), "app.order.created.42");
        assert_eq!(
            RoutingTemplate::parse("fixed").unwrap().render(&event()),
            "fixed"
        );
        assert_eq!(RoutingTemplate::parse("").unwrap().render(&event()), "");
    }

    #[test]
    fn rejects_bad_templates() {
        assert_eq!(
            RoutingTemplate::parse("{aggregate}"),
            Err(TemplateError::UnknownPlaceholder("aggregate".into()))
        );
        assert_eq!(
            RoutingTemplate::parse("{event_type"),
            Err(TemplateError::Unbalanced)
        );
        assert_eq!(RoutingTemplate::parse("x}"), Err(TemplateError::Unbalanced));
        assert_eq!(
            RoutingTemplate::parse("{{event_type}}"),
            Err(TemplateError::Unbalanced)
        );
    }
}
