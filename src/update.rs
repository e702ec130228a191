//! The update header: `set k=v&k2=v2`, `unset k&k2`, `invalidate`,
//! `regenerate`, `invalidate-user`, one per header line or joined by commas. A bad command is
//! a value (`Rejected`), never an error: it is logged and ignored.

use std::borrow::Cow;

/// Keys and values borrow from the header line unless percent-decoding
/// changed them: most commands copy nothing until the session takes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    Set(Vec<(Cow<'a, str>, Cow<'a, str>)>),
    Unset(Vec<Cow<'a, str>>),
    Invalidate,
    Regenerate,
    /// End every session of this session's user (`RSessionUser`).
    InvalidateUser,
}

/// Why a command was ignored, for the log line (no values: they may be
/// secrets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected(pub &'static str);

/// Parses every header line, one command after another, in order.
pub fn parse<'a>(
    lines: impl IntoIterator<Item = &'a str>,
) -> impl Iterator<Item = Result<Command<'a>, Rejected>> {
    lines
        .into_iter()
        .flat_map(|line| line.split(','))
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(parse_command)
}

/// The verbs, matched without regard to ASCII case.
const VERBS: [&str; 5] = [
    "set",
    "unset",
    "invalidate",
    "regenerate",
    "invalidate-user",
];

fn parse_command(text: &str) -> Result<Command<'_>, Rejected> {
    let (verb, args) = match text.split_once([' ', '\t']) {
        Some((v, a)) => (v, a.trim()),
        None => (text, ""),
    };
    let verb = VERBS
        .into_iter()
        .find(|known| known.eq_ignore_ascii_case(verb))
        .unwrap_or("");
    match verb {
        "set" => {
            let mut pairs = Vec::new();
            for segment in args.split('&').filter(|s| !s.is_empty()) {
                if !segment.contains('=') {
                    return Err(Rejected("set needs key=value pairs"));
                }
                let (k, v) = decode_pair(segment);
                if k.is_empty() {
                    return Err(Rejected("set with an empty key"));
                }
                pairs.push((k, v));
            }
            if pairs.is_empty() {
                return Err(Rejected("set without key=value pairs"));
            }
            Ok(Command::Set(pairs))
        }
        "unset" => {
            let keys: Vec<Cow<'_, str>> = args
                .split('&')
                .filter(|s| !s.is_empty())
                .map(|s| decode_pair(s).0)
                .filter(|k| !k.is_empty())
                .collect();
            if keys.is_empty() {
                return Err(Rejected("unset without keys"));
            }
            Ok(Command::Unset(keys))
        }
        "invalidate" if args.is_empty() => Ok(Command::Invalidate),
        "regenerate" if args.is_empty() => Ok(Command::Regenerate),
        "invalidate-user" if args.is_empty() => Ok(Command::InvalidateUser),
        "invalidate" | "regenerate" | "invalidate-user" => Err(Rejected(
            "invalidate, regenerate and invalidate-user take no arguments",
        )),
        _ => Err(Rejected(
            "unknown command (expected set, unset, invalidate, regenerate or invalidate-user)",
        )),
    }
}

/// Percent-decodes one `key=value` segment (`+` is a space, as in forms).
fn decode_pair(segment: &str) -> (Cow<'_, str>, Cow<'_, str>) {
    form_urlencoded::parse(segment.as_bytes())
        .next()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set<'a>(pairs: &[(&'a str, &'a str)]) -> Command<'a> {
        Command::Set(
            pairs
                .iter()
                .map(|&(k, v)| (Cow::Borrowed(k), Cow::Borrowed(v)))
                .collect(),
        )
    }

    fn parse<'a>(lines: impl IntoIterator<Item = &'a str>) -> Vec<Result<Command<'a>, Rejected>> {
        super::parse(lines).collect()
    }

    #[test]
    fn parses_commands_in_order() {
        let got = parse(["set a=1&b=x%20y, unset c", "invalidate", "regenerate"]);
        assert_eq!(
            got,
            vec![
                Ok(set(&[("a", "1"), ("b", "x y")])),
                Ok(Command::Unset(vec!["c".into()])),
                Ok(Command::Invalidate),
                Ok(Command::Regenerate),
            ]
        );
    }

    #[test]
    fn decodes_utf8_and_controls() {
        let got = parse(["set name=J%C3%BCrgen&t=a%26b%3Dc%0D%0A"]);
        assert_eq!(
            got,
            vec![Ok(set(&[("name", "Jürgen"), ("t", "a&b=c\r\n")]))]
        );
    }

    #[test]
    fn rejects_bad_commands_without_stopping() {
        let got = parse(["frobnicate, set, set =v, set novalue, unset, invalidate now, set ok=1"]);
        assert_eq!(got.len(), 7);
        assert!(got[..6].iter().all(Result::is_err));
        assert_eq!(got[6], Ok(set(&[("ok", "1")])));
    }

    #[test]
    fn invalidate_user_takes_no_arguments() {
        assert_eq!(
            parse(["set a=1, Invalidate-User"]),
            vec![Ok(set(&[("a", "1")])), Ok(Command::InvalidateUser)]
        );
        assert!(parse(["invalidate-user bob"])[0].is_err());
        assert!(parse(["invalidate-users"])[0].is_err());
    }

    #[test]
    fn empty_values_are_allowed() {
        assert_eq!(parse(["set k="]), vec![Ok(set(&[("k", "")]))]);
    }
}
