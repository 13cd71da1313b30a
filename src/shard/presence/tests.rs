//! Unit tests of the presence table: coalescing, tabs, other nodes' shares, the memory cap.

use super::*;

fn names(v: &[Rc<str>]) -> Vec<&str> {
    v.iter().map(|s| &**s).collect()
}

fn s(name: &str) -> Rc<str> {
    Rc::from(name)
}

/// Nothing to announce: no change, or one with empty lists (for fresh
/// snapshots only).
fn is_quiet(due: &Due) -> bool {
    due.frames
        .iter()
        .all(|(_, c)| c.join.is_empty() && c.leave.is_empty())
}

#[test]
fn a_join_then_a_leave_inside_one_interval_sends_no_frame() {
    let mut p = Presence::new(1_000, 100);
    let room = s("room");
    let (_, due) = p.join(&room, Some("alice"), true, 10);
    assert_eq!(due, Some(10), "the first change is due at once");
    assert_eq!(p.take_due(10).frames.len(), 1);
    let (bob, due) = p.join(&room, Some("bob"), true, 100);
    assert_eq!(due, Some(1_010), "the next one waits for the interval");
    assert_eq!(p.leave(&room, bob.as_ref(), true, 200), None, "already due");
    assert!(p.take_due(500).frames.is_empty(), "not due yet");
    let due = p.take_due(1_010);
    assert!(is_quiet(&due), "bob came and went: nothing to say");
    assert_eq!(p.next_due(), u64::MAX, "nothing left scheduled");
}

#[test]
fn a_leave_then_a_join_inside_one_interval_sends_no_frame() {
    let mut p = Presence::new(1_000, 100);
    let room = s("room");
    let (a, _) = p.join(&room, Some("alice"), true, 1);
    p.take_due(1);
    p.leave(&room, a.as_ref(), false, 5);
    p.join(&room, Some("alice"), false, 6);
    assert!(is_quiet(&p.take_due(2_000)));
}

#[test]
fn changes_in_one_interval_make_one_frame() {
    let mut p = Presence::new(1_000, 100);
    let room = s("room");
    let (c, _) = p.join(&room, Some("carol"), true, 1);
    p.take_due(1);
    for (i, u) in ["dave", "bob", "erin"].iter().enumerate() {
        p.join(&room, Some(u), false, 10 + i as u64);
    }
    p.leave(&room, c.as_ref(), false, 20);
    let due = p.take_due(1_001);
    assert_eq!(due.frames.len(), 1);
    let change = &due.frames[0].1;
    assert_eq!(names(&change.join), ["bob", "dave", "erin"]);
    assert_eq!(names(&change.leave), ["carol"]);
    assert_eq!(change.users_total, 3);
    assert_eq!(change.sockets, 3);
}

#[test]
fn a_second_tab_is_not_a_join_and_closing_it_is_not_a_leave() {
    let mut p = Presence::new(1_000, 100);
    let room = s("room");
    let (a1, _) = p.join(&room, Some("alice"), true, 1);
    let (a2, _) = p.join(&room, Some("alice"), true, 2);
    let due = p.take_due(2);
    assert_eq!(names(&due.frames[0].1.join), ["alice"]);
    assert_eq!(due.frames[0].1.sockets, 2);
    p.leave(&room, a2.as_ref(), true, 3);
    assert!(is_quiet(&p.take_due(5_000)), "alice is still here");
    assert_eq!(p.view("room", 100).users, vec![(s("alice"), 1)]);
    p.join(&room, Some("bob"), true, 5_001);
    p.leave(&room, a1.as_ref(), true, 5_002);
    assert!(
        p.take_due(5_002).frames.is_empty(),
        "one flush per interval"
    );
    let due = p.take_due(6_000);
    assert_eq!(names(&due.frames[0].1.leave), ["alice"]);
    assert_eq!(names(&due.frames[0].1.join), ["bob"]);
}

#[test]
fn changes_without_listeners_make_no_frame_but_a_share() {
    let mut p = Presence::new(1_000, 100);
    let room = s("room");
    p.join(&room, Some("alice"), false, 1);
    let due = p.take_due(1);
    assert!(due.frames.is_empty());
    assert_eq!(
        due.shares,
        vec![(
            room.clone(),
            Share {
                users: vec![(s("alice"), 1)],
                sockets: 1
            }
        )]
    );
}

#[test]
fn the_same_user_on_two_nodes_counts_once_and_a_dead_node_makes_its_users_leave() {
    let mut p = Presence::new(1_000, 100);
    let room = s("room");
    p.join(&room, Some("alice"), true, 1);
    p.take_due(1);
    p.set_remote(
        &room,
        "n2",
        &[("alice".into(), 2), ("bob".into(), 1)],
        3,
        10,
    );
    let due = p.take_due(1_001);
    assert_eq!(
        names(&due.frames[0].1.join),
        ["bob"],
        "alice was here already"
    );
    assert_eq!(due.frames[0].1.users_total, 2);
    assert_eq!(due.frames[0].1.sockets, 4);
    assert_eq!(
        p.view("room", 100).users,
        vec![(s("alice"), 3), (s("bob"), 1)]
    );
    // A repeated share changes nothing.
    assert_eq!(
        p.set_remote(
            &room,
            "n2",
            &[("alice".into(), 2), ("bob".into(), 1)],
            3,
            1_500
        ),
        None
    );
    p.drop_node("n2", 3_000);
    let due = p.take_due(3_000);
    assert_eq!(names(&due.frames[0].1.leave), ["bob"]);
    assert_eq!(p.view("room", 100).users, vec![(s("alice"), 1)]);
    assert_eq!(p.view("room", 100).sockets, 1);
    assert_eq!(p.remote_nodes().count(), 0);
}

#[test]
fn memory_is_capped_and_counted_and_given_back() {
    let mut p = Presence::new(1_000, 2);
    let room = s("room");
    let (a, _) = p.join(&room, Some("a"), false, 1);
    let (b, _) = p.join(&room, Some("b"), false, 1);
    let (c, _) = p.join(&room, Some("c"), false, 1);
    assert!(c.is_none(), "past the cap a user is not tracked by name");
    assert_eq!(p.untracked(), 1);
    assert_eq!(p.entries(), 2);
    assert_eq!(
        p.view("room", 100).sockets,
        3,
        "it still counts as a socket"
    );
    let big = p.view("room", 1);
    assert!(
        !big.listed && big.users.is_empty(),
        "past the list threshold, counts only"
    );
    assert_eq!(big.total, 2);
    p.leave(&room, c.as_ref(), false, 2);
    p.leave(&room, a.as_ref(), false, 2);
    p.leave(&room, b.as_ref(), false, 2);
    assert_eq!(p.entries(), 0);
    p.take_due(5_000);
    assert_eq!(p.session_count(), 0, "an empty session is forgotten");
}

#[test]
fn other_nodes_shares_are_kept_only_while_a_subscriber_is_here() {
    let mut p = Presence::new(1_000, 100);
    let room = s("room");
    assert_eq!(p.set_remote(&room, "n2", &[("bob".into(), 1)], 1, 1), None);
    assert_eq!(p.session_count(), 0, "nobody here: not kept");
    let (a, _) = p.join(&room, Some("alice"), true, 2);
    p.set_remote(&room, "n2", &[("bob".into(), 1)], 1, 3);
    assert_eq!(p.entries(), 2);
    p.take_due(3);
    p.leave(&room, a.as_ref(), true, 4);
    p.take_due(5_000);
    assert_eq!(
        p.session_count(),
        0,
        "the last subscriber here took them along"
    );
    assert_eq!(p.entries(), 0);
    assert_eq!(p.remote_nodes().count(), 0);
}

#[test]
fn an_unknown_session_is_empty() {
    let p = Presence::new(1_000, 10);
    assert_eq!(p.view("nobody", 10).total, 0);
    assert!(p.view("nobody", 10).users.is_empty());
    assert_eq!(p.counts("nobody"), (0, 0));
}
