//! Presence on the wire: the frames subscribers get (a change, a snapshot), the
//! body of `GET /sessions/{session}/presence`, and its paging cursor.
//!
//! Pure: bytes in, bytes out. A frame is built once per session and shared by
//! every subscriber that reads it; it carries no `seq` and never enters history.

use std::io::Write;
use std::rc::Rc;

use super::{Change, View};

fn push_str(out: &mut Vec<u8>, s: &str) {
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn push_names(out: &mut Vec<u8>, key: &str, names: &[Rc<str>]) {
    let _ = write!(out, r#","{key}":["#);
    for (i, n) in names.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_str(out, n);
    }
    out.push(b']');
}

fn push_users(out: &mut Vec<u8>, users: &[(Rc<str>, u32)]) {
    out.extend_from_slice(br#","users":["#);
    for (i, (sub, n)) in users.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(br#"{"sub":"#);
        push_str(out, sub);
        let _ = write!(out, r#","sockets":{n}}}"#);
    }
    out.push(b']');
}

/// `{"type":"presence","join":[..],"leave":[..],"users_total":U,"sockets":N}`;
/// without the lists when `names` is false (counts only).
pub fn change(change: &Change, names: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + 16 * (change.join.len() + change.leave.len()));
    out.extend_from_slice(br#"{"type":"presence""#);
    if names {
        push_names(&mut out, "join", &change.join);
        push_names(&mut out, "leave", &change.leave);
    }
    let _ = write!(
        out,
        r#","users_total":{},"sockets":{}}}"#,
        change.users_total, change.sockets
    );
    out
}

/// `{"type":"presence","users":[{"sub":..,"sockets":..}],"users_total":U,"sockets":N}`;
/// without `users` when `names` is false or the view is not listed.
pub fn snapshot(view: &View, names: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + 32 * view.users.len());
    out.extend_from_slice(br#"{"type":"presence""#);
    if names && view.listed {
        push_users(&mut out, &view.users);
    }
    let _ = write!(
        out,
        r#","users_total":{},"sockets":{}}}"#,
        view.total, view.sockets
    );
    out
}

/// One page of a query: the users after `after` (by `sub`), at most `limit`.
pub struct Page<'a> {
    pub session: &'a str,
    pub limit: usize,
    pub after: Option<&'a str>,
    /// Above this many users, counts only.
    pub list_max: usize,
}

/// The body of `GET /sessions/{session}/presence`:
/// `{"session":S,"users":[..],"sockets":N,"users_total":U,"next_cursor":C}`,
/// `next_cursor` only when more users follow, `users` only when the session has
/// at most `list_max` of them.
pub fn query(view: &View, page: &Page<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(96 + 32 * page.limit.min(view.users.len()));
    out.extend_from_slice(br#"{"session":"#);
    push_str(&mut out, page.session);
    let total = view.total;
    let mut next = None;
    if view.listed && total <= page.list_max {
        let start = page
            .after
            .map_or(0, |a| view.users.partition_point(|(s, _)| &**s <= a));
        let end = (start + page.limit).min(total);
        let shown = &view.users[start.min(end)..end];
        push_users(&mut out, shown);
        if end < total {
            next = shown.last().map(|(s, _)| cursor(s));
        }
    }
    let _ = write!(out, r#","sockets":{},"users_total":{total}"#, view.sockets);
    if let Some(c) = next {
        let _ = write!(out, r#","next_cursor":"{c}""#);
    }
    out.push(b'}');
    out
}

/// The cursor after user `sub`: its bytes in hex (opaque to clients).
pub fn cursor(sub: &str) -> String {
    sub.bytes().map(|b| format!("{b:02x}")).collect()
}

/// The user a cursor names, or `None` when it is not one [`cursor`] made.
pub fn parse_cursor(c: &str) -> Option<String> {
    if c.is_empty() || c.len() % 2 != 0 || c.len() > 1024 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..c.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(c.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(users: &[(&str, u32)]) -> View {
        View {
            users: users.iter().map(|(s, n)| (Rc::from(*s), *n)).collect(),
            sockets: users.iter().map(|(_, n)| n).sum(),
            total: users.len(),
            listed: true,
        }
    }

    #[test]
    fn frames_name_users_or_only_count_them() {
        let c = Change {
            join: vec![Rc::from("bob")],
            leave: vec![Rc::from("car\"ol")],
            users_total: 2,
            sockets: 3,
        };
        assert_eq!(
            String::from_utf8(change(&c, true)).unwrap(),
            r#"{"type":"presence","join":["bob"],"leave":["car\"ol"],"users_total":2,"sockets":3}"#
        );
        assert_eq!(
            String::from_utf8(change(&c, false)).unwrap(),
            r#"{"type":"presence","users_total":2,"sockets":3}"#
        );
        let v = view(&[("alice", 2), ("bob", 1)]);
        assert_eq!(
            String::from_utf8(snapshot(&v, true)).unwrap(),
            r#"{"type":"presence","users":[{"sub":"alice","sockets":2},{"sub":"bob","sockets":1}],"users_total":2,"sockets":3}"#
        );
    }

    #[test]
    fn pages_follow_their_cursor_to_the_end() {
        let v = view(&[("a", 1), ("b", 1), ("c", 2)]);
        let mut page = Page {
            session: "s",
            limit: 2,
            after: None,
            list_max: 10,
        };
        let first: serde_json::Value = serde_json::from_slice(&query(&v, &page)).unwrap();
        assert_eq!(first["users"].as_array().unwrap().len(), 2);
        assert_eq!(first["users_total"], 3);
        assert_eq!(first["sockets"], 4);
        let c = first["next_cursor"].as_str().unwrap().to_string();
        let after = parse_cursor(&c).unwrap();
        page.after = Some(&after);
        let second: serde_json::Value = serde_json::from_slice(&query(&v, &page)).unwrap();
        assert_eq!(second["users"][0]["sub"], "c");
        assert_eq!(second["users"][0]["sockets"], 2);
        assert!(second.get("next_cursor").is_none(), "the last page says so");
    }

    #[test]
    fn big_sessions_answer_counts_only() {
        let v = view(&[("a", 1), ("b", 1), ("c", 2)]);
        let page = Page {
            session: "s",
            limit: 100,
            after: None,
            list_max: 2,
        };
        let body: serde_json::Value = serde_json::from_slice(&query(&v, &page)).unwrap();
        assert!(body.get("users").is_none());
        assert_eq!(body["users_total"], 3);
    }

    #[test]
    fn cursors_round_trip_and_junk_is_refused() {
        assert_eq!(parse_cursor(&cursor("älice")).as_deref(), Some("älice"));
        for junk in ["", "abc", "zz", "ff", "0g"] {
            assert_eq!(parse_cursor(junk), None, "{junk:?}");
        }
    }
}
