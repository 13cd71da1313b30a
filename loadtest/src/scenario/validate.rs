//! The ranges every scenario field must be in, checked once after loading so that every
//! loop of a run is bounded and a typo is refused with the field's name.
//!
//! Owns: [`Scenario::validate`]. May not read files or apply overrides (that is `load`).
//! Target addresses are checked separately in [`crate::target`].

use std::time::Duration;

use super::error::ScenarioError;
use super::{
    Kind, Scenario, TargetKind, Transport, MAX_BATCH, MAX_DURATION, MAX_PUBLISHERS, MAX_SOCKETS,
};

fn invalid(field: &'static str, why: impl Into<String>) -> ScenarioError {
    ScenarioError::Invalid {
        field,
        why: why.into(),
    }
}

impl Scenario {
    /// Checks ranges. Target addresses are checked separately in [`crate::target`].
    pub fn validate(&self) -> Result<(), ScenarioError> {
        if self.duration.0.is_zero() || self.duration.0 > MAX_DURATION {
            return Err(invalid("duration", "must be between 1ms and 1h"));
        }
        for (field, d) in [
            ("drain", self.drain),
            ("settle", self.settle),
            ("connect_timeout", self.connect_timeout),
            ("request_timeout", self.request_timeout),
            ("churn_life", self.churn_life),
            ("away", self.away),
        ] {
            if d.0 > Duration::from_secs(600) {
                return Err(invalid(field, "must be at most 10 minutes"));
            }
        }
        if self.connect_timeout.0.is_zero() || self.request_timeout.0.is_zero() {
            return Err(invalid("connect_timeout", "timeouts must be above zero"));
        }
        if self.sessions == 0 {
            return Err(invalid("sessions", "must be at least 1"));
        }
        let needs_sockets = !matches!(self.kind, Kind::PublishThroughput);
        if needs_sockets && self.sockets_per_session == 0 {
            return Err(invalid("sockets_per_session", "must be at least 1"));
        }
        if self.total_sockets() > MAX_SOCKETS {
            return Err(invalid(
                "sockets_per_session",
                format!("sessions × sockets_per_session is above {MAX_SOCKETS}"),
            ));
        }
        if self.kind.publishes() {
            if !(self.rate.is_finite() && self.rate > 0.0 && self.rate <= 10_000_000.0) {
                return Err(invalid(
                    "rate",
                    "must be above 0 and at most 10,000,000 events/s",
                ));
            }
            if self.batch == 0 || self.batch > MAX_BATCH {
                return Err(invalid("batch", format!("must be 1..={MAX_BATCH}")));
            }
            if self.publishers == 0 || self.publishers > MAX_PUBLISHERS {
                return Err(invalid(
                    "publishers",
                    format!("must be 1..={MAX_PUBLISHERS}"),
                ));
            }
            if self.event_bytes < crate::event::MIN_DATA_BYTES || self.event_bytes > 1 << 20 {
                return Err(invalid(
                    "event_bytes",
                    format!(
                        "must be {}..=1048576 (the timestamp needs room)",
                        crate::event::MIN_DATA_BYTES
                    ),
                ));
            }
            if self.event_bytes * self.batch as usize > 16 << 20 {
                return Err(invalid("batch", "event_bytes × batch is above 16 MiB"));
            }
        }
        if self.connect_concurrency == 0 {
            return Err(invalid("connect_concurrency", "must be at least 1"));
        }
        if !(self.connect_rate.is_finite() && self.connect_rate >= 0.0) {
            return Err(invalid(
                "connect_rate",
                "must be 0 (unpaced) or a positive rate",
            ));
        }
        if !(0.0..=100.0).contains(&self.slow_percent) {
            return Err(invalid("slow_percent", "must be between 0 and 100"));
        }
        if self.kind == Kind::SlowConsumers && self.slow_percent <= 0.0 {
            return Err(invalid(
                "slow_percent",
                "slow-consumers needs slow_percent above 0",
            ));
        }
        if self.kind == Kind::SlowConsumers && self.transport == Transport::Poll {
            return Err(invalid(
                "transport",
                "slow-consumers needs a stream (ws or sse): a poller that stops polling holds no queue",
            ));
        }
        if !(self.churn_rate.is_finite() && (0.0..=100_000.0).contains(&self.churn_rate)) {
            return Err(invalid(
                "churn_rate",
                "must be between 0 and 100,000 per second",
            ));
        }
        if self.kind == Kind::Churn && (self.churn_rate <= 0.0 || self.churn_life.0.is_zero()) {
            return Err(invalid(
                "churn_rate",
                "churn needs churn_rate and churn_life above 0",
            ));
        }
        if !(self.drop_fraction.is_finite() && (0.0..=1.0).contains(&self.drop_fraction)) {
            return Err(invalid("drop_fraction", "must be between 0 and 1"));
        }
        if !(self.resume_share.is_finite() && (0.0..=1.0).contains(&self.resume_share)) {
            return Err(invalid("resume_share", "must be between 0 and 1"));
        }
        if self.source_addrs > 250 {
            return Err(invalid(
                "source_addrs",
                "at most 250 (127.0.0.2 … 127.0.0.251)",
            ));
        }
        if self.kind == Kind::CrossNode && self.nodes.is_empty() {
            return Err(invalid(
                "nodes",
                "cross-node needs the list of node URLs to receive on",
            ));
        }
        if !(self.max_error_ratio.is_finite() && (0.0..=1.0).contains(&self.max_error_ratio)) {
            return Err(invalid("max_error_ratio", "must be between 0 and 1"));
        }
        if self.target == TargetKind::Harness {
            self.validate_harness()?;
        }
        Ok(())
    }

    /// What a harness target (`GET /ws?session=S`, `POST /publish/S`) cannot do: it has
    /// no seq, epoch, resume, receipts, batches, event streams or polls, and no
    /// slow-consumer close. Each refusal names the scenario key that asked for it.
    fn validate_harness(&self) -> Result<(), ScenarioError> {
        match self.kind {
            Kind::Resume => {
                return Err(invalid(
                    "kind",
                    "resume cannot run against target = \"harness\": it needs seq, epochs, \
                     `since=` and the 202 receipts, which a harness does not have",
                ))
            }
            Kind::SlowConsumers => {
                return Err(invalid(
                    "kind",
                    "slow-consumers cannot run against target = \"harness\": it expects the \
                     relay's 4008 close for a socket that does not read",
                ))
            }
            _ => {}
        }
        if self.transport != Transport::Ws {
            return Err(invalid(
                "transport",
                format!(
                    "target = \"harness\" serves only `GET /ws?session=S`: transport must be \
                     ws, not {}",
                    self.transport
                ),
            ));
        }
        if self.kind.publishes() && self.batch != 1 {
            return Err(invalid(
                "batch",
                "target = \"harness\" takes one event per `POST /publish/S` request: \
                 batches are not supported, set batch = 1",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::tests::FANOUT;
    use crate::scenario::{from_str, Dur, TargetKind};

    #[test]
    fn out_of_range_fields_name_the_field() {
        for (o, field) in [
            ("batch=0", "batch"),
            ("batch=1001", "batch"),
            ("rate=0", "rate"),
            ("event_bytes=3", "event_bytes"),
            ("duration=2h", "duration"),
            ("sessions=0", "sessions"),
        ] {
            let err = from_str(FANOUT, &[o.into()]).unwrap_err();
            match err {
                ScenarioError::Invalid { field: f, .. } => assert_eq!(f, field, "{o}"),
                other => panic!("{o}: {other}"),
            }
        }
    }

    #[test]
    fn cross_node_needs_nodes_and_churn_needs_a_rate() {
        assert!(from_str("kind = \"cross-node\"\n", &[]).is_err());
        assert!(from_str(
            "kind = \"cross-node\"\nnodes = [\"http://127.0.0.1:3001\"]\n",
            &[]
        )
        .is_ok());
        assert!(from_str("kind = \"churn\"\n", &[]).is_err());
        let churn = from_str(
            "kind = \"churn\"\nchurn_rate = 50\nchurn_life = \"2s\"\n",
            &[],
        )
        .expect("valid");
        assert_eq!(churn.churn_live_max(), 50 * 13 + 1);
    }

    #[test]
    fn slow_consumers_need_a_streaming_transport() {
        let slow = "kind = \"slow-consumers\"\nslow_percent = 10\n";
        assert!(from_str(slow, &["transport=sse".into()]).is_ok());
        match from_str(slow, &["transport=poll".into()]) {
            Err(ScenarioError::Invalid { field, .. }) => assert_eq!(field, "transport"),
            other => panic!("{other:?}"),
        }
        assert!(from_str(FANOUT, &["transport=poll".into()]).is_ok());
    }

    #[test]
    fn a_harness_target_refuses_what_it_cannot_measure_by_key() {
        let h = |extra: &str, o: &[&str]| {
            let text = format!("target = \"harness\"\n{extra}");
            let o: Vec<String> = o.iter().map(|s| (*s).to_owned()).collect();
            from_str(&text, &o)
        };
        let ok = h("kind = \"fanout\"\n", &[]).expect("valid");
        assert_eq!(ok.target, TargetKind::Harness);
        assert!(!ok.needs_credentials());
        assert!(h("kind = \"churn\"\nchurn_rate = 5\n", &[]).is_ok());
        assert!(h("kind = \"connect-storm\"\n", &[]).is_ok());
        for (extra, o, field, says) in [
            ("kind = \"resume\"\n", "batch=1", "kind", "receipts"),
            (
                "kind = \"slow-consumers\"\nslow_percent = 5\n",
                "batch=1",
                "kind",
                "4008",
            ),
            (
                "kind = \"fanout\"\n",
                "batch=10",
                "batch",
                "batches are not supported",
            ),
            (
                "kind = \"fanout\"\n",
                "transport=sse",
                "transport",
                "not sse",
            ),
            (
                "kind = \"fanout\"\n",
                "transport=poll",
                "transport",
                "not poll",
            ),
        ] {
            match h(extra, &[o]) {
                Err(e @ ScenarioError::Invalid { .. }) => {
                    let msg = e.to_string();
                    assert!(msg.contains(&format!("`{field}`")), "{msg}");
                    assert!(msg.contains(says) && msg.contains("harness"), "{msg}");
                }
                other => panic!("{extra} {o}: {other:?}"),
            }
        }
        // The relay target keeps batches.
        assert!(from_str(FANOUT, &["target=\"relay\"".into()]).is_ok());
    }

    #[test]
    fn resume_defaults_and_ranges() {
        let s = from_str("kind = \"resume\"\n", &[]).expect("valid");
        assert_eq!(s.kind, Kind::Resume);
        assert!(s.kind.publishes());
        assert!((s.drop_fraction - 0.1).abs() < 1e-12);
        assert_eq!(s.away, Dur::millis(200));
        assert!((s.resume_share - 1.0).abs() < 1e-12);
        for bad in ["resume_share=2", "resume_share=-1"] {
            match from_str("kind = \"resume\"\n", &[bad.into()]) {
                Err(ScenarioError::Invalid { field, .. }) => assert_eq!(field, "resume_share"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        for bad in ["drop_fraction=1.5", "drop_fraction=-0.1"] {
            match from_str("kind = \"resume\"\n", &[bad.into()]) {
                Err(ScenarioError::Invalid { field, .. }) => assert_eq!(field, "drop_fraction"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert!(from_str("kind = \"resume\"\naway = \"11m\"\n", &[]).is_err());
    }
}
