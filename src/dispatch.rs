//! How httpd will pick a request's handler, as far as a session cares:
//! a static file can only read its session, anything else may change it.

/// Content types that handlers answer to in place of a handler name:
/// `application/x-httpd-*` (mod_cgi, mod_php; ASCII case ignored,
/// parameters aside). One that no module claims is served as a file, but
/// is taken for dynamic all the same: wrongly so, it only costs a lock.
pub fn names_a_handler(content_type: &str) -> bool {
    let t = content_type.split(';').next().unwrap_or("").trim();
    let starts = |prefix: &str| {
        t.get(..prefix.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
    };
    starts("application/x-httpd-")
}

#[cfg(test)]
mod tests {
    use super::names_a_handler;

    #[test]
    fn handler_content_types_are_told_from_files() {
        for t in [
            "application/x-httpd-cgi",
            "application/x-httpd-php",
            "Application/X-HTTPD-php; charset=utf-8",
        ] {
            assert!(names_a_handler(t), "{t}");
        }
        for t in [
            "text/html",
            "image/png",
            "application/x-httpd",
            "application/json",
            // No httpd 2.4 module serves this one: mod_include goes by the
            // server-parsed handler.
            "text/x-server-parsed-html",
            "",
        ] {
            assert!(!names_a_handler(t), "{t}");
        }
    }
}
