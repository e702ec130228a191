//! How httpd will pick a request's handler, as far as a session cares:
//! a static file can only read its session, anything else may change it.

/// Content types that handlers answer to in place of a handler name:
/// `application/x-httpd-*` (mod_cgi, mod_php) and mod_include's
/// `text/x-server-parsed-html` (ASCII case ignored, parameters aside).
pub fn names_a_handler(content_type: &str) -> bool {
    let t = content_type.split(';').next().unwrap_or("").trim();
    let starts = |prefix: &str| {
        t.get(..prefix.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
    };
    starts("application/x-httpd-") || t.eq_ignore_ascii_case("text/x-server-parsed-html")
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
            "text/x-server-parsed-html",
        ] {
            assert!(names_a_handler(t), "{t}");
        }
        for t in [
            "text/html",
            "image/png",
            "application/x-httpd",
            "application/json",
            "",
        ] {
            assert!(!names_a_handler(t), "{t}");
        }
    }
}
