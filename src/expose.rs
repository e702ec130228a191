//! What handlers see of the session, and what clients must not be able to
//! forge: the reserved request header names, and the largest data an
//! environment variable can carry into a CGI.

/// Request headers whose names normalise to this prefix are ours.
const RESERVED_PREFIX: &[u8] = b"x-rsession-";

/// True for a client header name that a backend could read as one of ours.
/// Compared as backends compare: ASCII case ignored, and `_` taken for `-`
/// (CGI/WSGI gateways turn both into `_`: `X-RSession_Dir` arrives as
/// `HTTP_X_RSESSION_DIR`, exactly like `X-RSession-Dir`).
pub fn is_reserved_request_header(name: &[u8]) -> bool {
    name.len() >= RESERVED_PREFIX.len()
        && name
            .iter()
            .zip(RESERVED_PREFIX)
            .all(|(&c, &p)| normalise(c) == p)
}

/// True for a client header a backend could read as one of ours: reserved
/// (`is_reserved_request_header`), or named as the location's update header
/// (`X-RSession`), which a backend that reflects request headers into its
/// response would hand back to the module as commands.
pub fn is_client_session_header(name: &[u8], update_header: &str) -> bool {
    is_reserved_request_header(name)
        || (name.len() == update_header.len()
            && name
                .iter()
                .zip(update_header.as_bytes())
                .all(|(&c, &u)| normalise(c) == normalise(u)))
}

fn normalise(c: u8) -> u8 {
    match c {
        b'_' => b'-',
        c => c.to_ascii_lowercase(),
    }
}

/// Linux refuses to `execve` a program with one environment string longer
/// than MAX_ARG_STRLEN (32 pages: 131,072 bytes, its NUL included), so every
/// CGI request of a session whose `RSESSION_DATA=…` exceeds it would fail.
const MAX_ARG_STRLEN: usize = 32 * 4096;

/// The largest encoded data `RSESSION_DATA` can carry into a CGI.
pub const MAX_EXPORTABLE_DATA: usize = MAX_ARG_STRLEN - "RSESSION_DATA=".len() - 1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spoofed_names_are_reserved_whatever_their_spelling() {
        for name in [
            "X-RSession-Id",
            "x-rsession-dir",
            "X-RSession_Dir",
            "X_RSession_Data",
            "x_rsession_",
            "X-RSESSION-ANYTHING",
        ] {
            assert!(is_reserved_request_header(name.as_bytes()), "{name}");
        }
        for name in ["X-RSession", "X-RSessionId", "X-Other", "RSession-Id", ""] {
            assert!(!is_reserved_request_header(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn the_update_header_is_a_session_header_whatever_its_spelling() {
        for name in ["X-RSession", "x_rsession", "X-RSESSION", "X-RSession-Id"] {
            assert!(
                is_client_session_header(name.as_bytes(), "X-RSession"),
                "{name}"
            );
        }
        assert!(is_client_session_header(b"x_app_update", "X-App-Update"));
        for name in ["X-RSessionX", "X-RSessio", "X-Other", ""] {
            assert!(
                !is_client_session_header(name.as_bytes(), "X-RSession"),
                "{name}"
            );
        }
    }

    #[test]
    fn exportable_data_fits_one_environment_string() {
        assert_eq!(MAX_EXPORTABLE_DATA + "RSESSION_DATA=".len() + 1, 131_072);
    }
}
