//! Unit tests of the router: shard hashing, inbox budgets, the doorbell, reserved reply room.

use super::*;

#[test]
fn shard_for_is_stable_and_in_range() {
    // Pinned values: changing the hash would move every session to another
    // shard between versions, and nodes of one fleet would disagree.
    assert_eq!(shard_for("s1", 1), 0);
    let four: Vec<usize> = ["a", "b", "c", "d"]
        .iter()
        .map(|s| shard_for(s, 4))
        .collect();
    assert_eq!(four, [3, 1, 2, 1]);
    assert_eq!(shard_for("session-42", 8), 5);
    assert_eq!(shard_for("session-42", 4), 2);
}

#[test]
fn sessions_spread_over_shards() {
    let mut counts = [0usize; 4];
    for i in 0..4000 {
        counts[shard_for(&format!("session-{i}"), 4)] += 1;
    }
    assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
}

#[test]
fn budget_refuses_past_its_bytes_and_releases() {
    let b = InboxBudget::default();
    assert!(b.try_reserve(INBOX_BYTES));
    assert!(!b.try_reserve(1));
    b.release(INBOX_BYTES);
    assert!(b.try_reserve(1));
}

#[test]
fn doorbell_writes_once_per_wake() {
    let (bell, reader) = Doorbell::pair().unwrap();
    bell.ring();
    bell.ring();
    let mut buf = [0u8; 8];
    use std::io::Read;
    assert_eq!((&reader).read(&mut buf).unwrap(), 1);
    bell.rearm();
    bell.ring();
    assert_eq!((&reader).read(&mut buf).unwrap(), 1);
}

fn deliver_to(reply_to: usize) -> DeliverMsg {
    DeliverMsg {
        batch: Arc::new(PublishBatch {
            body: Vec::new(),
            events: Vec::new(),
        }),
        events: Vec::new(),
        accepted_at: Instant::now(),
        reserved_bytes: 0,
        reply: Some((reply_to, 1)),
        id_shard: reply_to,
        id_base: 0,
        wait_delivered: false,
    }
}

#[test]
fn a_dispatch_reserves_room_for_its_reply_so_the_owner_never_waits() {
    let (router, inboxes) = Router::new(3).unwrap();
    // Shard 0 publishes to shards 1 and 2 in turn (so neither owner's inbox is
    // the limit), until shard 0's own inbox is all reserved
    // for replies: then a further publish is refused up front (503), instead of
    // the owner finding no room for its answer later.
    let mut admitted = 0;
    while router
        .dispatch(vec![(1 + admitted % 2, deliver_to(0))])
        .is_ok()
    {
        admitted += 1;
        assert!(admitted <= INBOX_MESSAGES, "reply room was never reserved");
    }
    assert_eq!(admitted, INBOX_MESSAGES);
    assert_eq!(inboxes[1].rx.len() + inboxes[2].rx.len(), INBOX_MESSAGES);
    // Every admitted publish still gets its answer in, with shard 0's inbox
    // otherwise full: none of these sends can fail or wait.
    for _ in 0..admitted {
        let reply = ShardMsg::Sequenced {
            id: 1,
            receipts: Vec::new(),
        };
        assert!(router.send_reserved(0, reply).is_ok());
    }
    assert_eq!(inboxes[0].rx.len(), INBOX_MESSAGES);
    // A control message without a reservation finds the inbox full.
    assert!(matches!(
        router.send(0, ShardMsg::Drain),
        Err((RouteError::InboxFull(0), _))
    ));
}
