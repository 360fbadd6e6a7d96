//! The one reader of a metrics rendering (`/metrics`, or `Metrics::render` in-process): a
//! sample's value by its exact series, and a labelled family's total. (Prometheus's own query
//! API is read in `prometheus.rs`.)

/// The value of the sample named exactly `series`: the metric name and, for a labelled one,
/// its labels as rendered (`outbox_publish_failures_total{reason="nacked"}`); `None` when the
/// rendering has no such sample.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|e| panic!("{series}: value {v:?}: {e}"))
        })
}

/// [`sample`], 0 when absent (a series nothing has touched yet).
pub fn value(text: &str, series: &str) -> f64 {
    sample(text, series).unwrap_or(0.0)
}

/// The value of an unlabelled metric as an integer (0 if absent).
pub fn gauge(text: &str, name: &str) -> i64 {
    value(text, name) as i64
}

/// The sum of every labelled sample of `family` (`family{...} value`).
pub fn total(text: &str, family: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(family)
                .is_some_and(|rest| rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
