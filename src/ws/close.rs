//! Why a socket ended: the close code the client sees, what it should do, and the
//! `reason` label of `relay_socket_disconnects_total`.
//!
//! A normal ending is not an error: every way a socket can end is one
//! [`Disconnect`], counted, and logged at debug level at most.

/// Every way a socket ends. The close code tells the client how to react.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disconnect {
    /// The client closed (close frame or EOF). Nothing to do.
    ClientClosed,
    /// No frame from the client for the ping timeout: presumed dead. 1001.
    Timeout,
    /// The socket's outbound queue overflowed: the client could not keep up. 4008;
    /// reconnect and reload state.
    SlowConsumer,
    /// The token expired without a refresh. 4001; fetch a new token, then reconnect.
    TokenExpired,
    /// A WebSocket protocol violation. 1002.
    ProtocolError,
    /// Text that is not UTF-8. 1007.
    InvalidUtf8,
    /// A client message over the limit. 1009.
    MessageTooBig,
    /// A message the relay does not accept, or a refresh for another session. 1008.
    Policy,
    /// The node is draining. 1012; reconnect, to another node if there is one.
    Draining,
    /// The connection failed under us (reset, broken pipe). No close frame.
    IoError,
    /// The node could not take the socket on (its Redis bridge is behind). 1013;
    /// reconnect later.
    Overloaded,
    /// The client sent messages faster than its budget. 1008.
    Flood,
    /// The relay failed: the subscriber's task ended without saying why (it
    /// panicked). 1011; reconnect with `since`.
    Internal,
}

impl Disconnect {
    /// Every variant, in the order of [`Disconnect::index`].
    pub const ALL: [Disconnect; 13] = [
        Disconnect::ClientClosed,
        Disconnect::Timeout,
        Disconnect::SlowConsumer,
        Disconnect::TokenExpired,
        Disconnect::ProtocolError,
        Disconnect::InvalidUtf8,
        Disconnect::MessageTooBig,
        Disconnect::Policy,
        Disconnect::Draining,
        Disconnect::IoError,
        Disconnect::Overloaded,
        Disconnect::Flood,
        Disconnect::Internal,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    /// The close frame the relay sends, if any.
    pub fn close_code(self) -> Option<u16> {
        match self {
            Disconnect::ClientClosed | Disconnect::IoError => None,
            Disconnect::Timeout => Some(1001),
            Disconnect::SlowConsumer => Some(4008),
            Disconnect::TokenExpired => Some(4001),
            Disconnect::ProtocolError => Some(1002),
            Disconnect::InvalidUtf8 => Some(1007),
            Disconnect::MessageTooBig => Some(1009),
            Disconnect::Policy => Some(1008),
            Disconnect::Draining => Some(1012),
            Disconnect::Overloaded => Some(1013),
            Disconnect::Flood => Some(1008),
            Disconnect::Internal => Some(1011),
        }
    }

    /// The close frame's reason text.
    pub fn close_reason(self) -> &'static str {
        match self {
            Disconnect::ClientClosed => "",
            Disconnect::Timeout => "ping timeout",
            Disconnect::SlowConsumer => "client could not keep up",
            Disconnect::TokenExpired => "token expired",
            Disconnect::ProtocolError => "protocol error",
            Disconnect::InvalidUtf8 => "invalid utf-8",
            Disconnect::MessageTooBig => "message too big",
            Disconnect::Policy => "message not allowed",
            Disconnect::Draining => "node draining",
            Disconnect::IoError => "",
            Disconnect::Overloaded => "node overloaded",
            Disconnect::Flood => "message rate over budget",
            Disconnect::Internal => "internal error",
        }
    }

    /// The `reason` label of `relay_socket_disconnects_total`.
    pub fn metric_reason(self) -> &'static str {
        match self {
            Disconnect::ClientClosed => "client_close",
            Disconnect::Timeout => "timeout",
            Disconnect::SlowConsumer => "slow_consumer",
            Disconnect::TokenExpired => "token_expired",
            Disconnect::ProtocolError | Disconnect::InvalidUtf8 | Disconnect::MessageTooBig => {
                "protocol_error"
            }
            Disconnect::Policy => "policy",
            Disconnect::Draining => "draining",
            Disconnect::IoError => "io_error",
            Disconnect::Overloaded => "overloaded",
            Disconnect::Flood => "flood",
            Disconnect::Internal => "internal_error",
        }
    }

    /// Maps a tungstenite read error to the ending it means.
    pub fn from_ws_error(err: &tungstenite::Error) -> Disconnect {
        use tungstenite::error::{CapacityError, Error};
        match err {
            Error::ConnectionClosed | Error::AlreadyClosed => Disconnect::ClientClosed,
            Error::Capacity(CapacityError::MessageTooLong { .. }) => Disconnect::MessageTooBig,
            Error::Capacity(_) => Disconnect::MessageTooBig,
            Error::Utf8(_) => Disconnect::InvalidUtf8,
            Error::Io(_) => Disconnect::IoError,
            _ => Disconnect::ProtocolError,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_matches_all_order() {
        for (i, d) in Disconnect::ALL.iter().enumerate() {
            assert_eq!(d.index(), i);
        }
    }

    #[test]
    fn contract_close_codes() {
        assert_eq!(Disconnect::SlowConsumer.close_code(), Some(4008));
        assert_eq!(Disconnect::TokenExpired.close_code(), Some(4001));
        assert_eq!(Disconnect::Draining.close_code(), Some(1012));
        assert_eq!(Disconnect::MessageTooBig.close_code(), Some(1009));
        assert_eq!(Disconnect::Policy.close_code(), Some(1008));
    }
}
