//! The manual against the code: every configuration key is in `docs/configuration.md` and
//! every metric family in `docs/operations.md`, and neither lists one the code does not have.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use outbox_relay::{broker::PublishError, config::Config, ops::metrics::Metrics};

/// The first backticked cell of each table row of a file under `docs/`.
fn documented(file: &str) -> BTreeSet<String> {
    let path = format!("{}/docs/{file}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .filter_map(|line| line.strip_prefix("| `")?.split('`').next())
        .map(str::to_owned)
        .collect()
}

/// Dotted paths of the leaves of a JSON value (`database.url`, `broker.sqs.routes`).
fn leaves(prefix: &str, value: &serde_json::Value, out: &mut BTreeSet<String>) {
    match value.as_object() {
        // A map the user fills (routes) is one key, not a section.
        Some(map) if !map.is_empty() => {
            for (key, child) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                leaves(&path, child, out);
            }
        }
        _ => {
            out.insert(prefix.to_owned());
        }
    }
}

fn difference(left: &BTreeSet<String>, right: &BTreeSet<String>) -> Vec<String> {
    left.difference(right).cloned().collect()
}

#[test]
fn every_configuration_key_is_documented_and_every_documented_key_exists() {
    // Keys left out of the rendering while unset are set here, so they count too.
    let mut config = Config::default();
    config.relay.max_inflight_batches = Some(8);
    let mut keys = BTreeSet::new();
    leaves("", &serde_json::to_value(config).unwrap(), &mut keys);
    let docs = documented("configuration.md");
    assert_eq!(
        difference(&keys, &docs),
        Vec::<String>::new(),
        "keys missing from docs/configuration.md"
    );
    assert_eq!(
        difference(&docs, &keys),
        Vec::<String>::new(),
        "docs/configuration.md lists keys the code does not have"
    );
}

#[test]
fn every_metric_family_is_documented_and_every_documented_one_is_exported() {
    // The families as a relay exports them from start-up (labelled ones with their known
    // labels); counters carry `_total` on their samples.
    let metrics = Metrics::new();
    metrics.export_known_labels(&PublishError::REASONS, &["outbox".to_owned()]);
    let text = metrics.render();
    let families: BTreeSet<String> = text
        .lines()
        .filter_map(|line| {
            let mut parts = line.strip_prefix("# TYPE ")?.split(' ');
            let (name, kind) = (parts.next()?, parts.next()?);
            Some(if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_owned()
            })
        })
        .collect();
    assert!(!families.is_empty(), "{text}");
    let docs: BTreeSet<String> = documented("operations.md")
        .into_iter()
        .filter(|name| name.starts_with("outbox_"))
        .collect();
    assert_eq!(
        difference(&families, &docs),
        Vec::<String>::new(),
        "metric families missing from docs/operations.md"
    );
    assert_eq!(
        difference(&docs, &families),
        Vec::<String>::new(),
        "docs/operations.md lists metric families the relay does not export"
    );
}
