//! Reading the node's Prometheus text exposition: [`metric_value`] sums the samples of one
//! metric whose labels match.
//!
//! Owns parsing only (pure); fetching `/metrics` is [`super::node::Node::metrics`].

/// Sums every sample of `name` (exact metric name, not `_bucket`/`_sum` variants unless
/// asked for) whose labels include all of `labels`. `None` when no sample matches.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = match line.find('{') {
            Some(i) if line[..i].find(' ').is_none() => {
                let close = line.rfind('}')?;
                (&line[..=close], line[close + 1..].trim())
            }
            _ => match line.split_once(' ') {
                Some((s, v)) => (s, v.trim()),
                None => continue,
            },
        };
        let (metric, label_text) = match series.find('{') {
            Some(i) => (&series[..i], &series[i + 1..series.len() - 1]),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        let all = labels
            .iter()
            .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")));
        if !all {
            continue;
        }
        let v: f64 = value.split_whitespace().next()?.parse().ok()?;
        total = Some(total.unwrap_or(0.0) + v);
    }
    total
}
