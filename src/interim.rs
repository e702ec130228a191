//! Interim (1xx) responses on their way to the client. httpd writes them
//! straight to the connection (`ap_send_interim_response`), past every
//! request filter and hook, and after a `101` mod_proxy tunnels raw bytes.
//! While a request holds a live session, mod_rsession reads the bytes that
//! reach the connection with this parser: it removes the update header
//! from each 1xx header block and reports each block (a `101` releases the
//! session's lock). The first non-1xx status line ends the watch, and so
//! does anything that is not a well-formed interim block.

/// Buffer space a reused parser keeps between requests.
const KEPT_CAPACITY: usize = 8 * 1024;

/// A 1xx header block larger than this is not held back for inspection
/// (httpd's own limits on a backend's header fields are far below it).
pub const MAX_BLOCK: usize = 1 << 20;

/// What the parser reports to its caller.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A whole 1xx header block, from which `removed` update header lines
    /// were taken out. The caller may add header lines to it.
    Block { status: u16, removed: usize },
    /// A 1xx block over `MAX_BLOCK`: passed on as it was.
    TooLarge,
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Phase {
    /// At the start of a response: its status line is being gathered.
    Start,
    /// Inside a 1xx header block, held until its blank line.
    Interim(u16),
    /// A final response, or the tunnel after a `101`: bytes pass as they are.
    Done,
}

/// What a status line's first bytes say.
enum StatusLine {
    Incomplete,
    NotInterim,
    Interim(u16),
}

/// `HTTP/d.d ddd` is the shape of every status line httpd writes.
fn status_line(b: &[u8]) -> StatusLine {
    const SHAPE: &[u8; 12] = b"HTTP/0.0 000";
    for (i, (&have, &want)) in b.iter().zip(SHAPE.iter()).enumerate() {
        let fits = match want {
            b'0' => have.is_ascii_digit(),
            _ => have == want || (i < 5 && have.eq_ignore_ascii_case(&want)),
        };
        if !fits {
            return StatusLine::NotInterim;
        }
    }
    if b.len() < SHAPE.len() {
        return StatusLine::Incomplete;
    }
    let status = b[9..12]
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    match status {
        100..=199 => StatusLine::Interim(status),
        _ => StatusLine::NotInterim,
    }
}

/// Where the block in `b` ends (just past its blank line), if it does.
fn block_end(b: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(at) = b[i..].iter().position(|&c| c == b'\n') {
        let lf = i + at;
        let next = lf + 1;
        match b.get(next) {
            Some(b'\n') => return Some(next + 1),
            Some(b'\r') if b.get(next + 1) == Some(&b'\n') => return Some(next + 2),
            _ => i = next,
        }
    }
    None
}

pub struct Interim {
    /// The update header's name, lowercase.
    header: Vec<u8>,
    /// A second name to remove (an internal redirect's location may name
    /// another update header), lowercase; empty for none.
    also: Vec<u8>,
    phase: Phase,
    held: Vec<u8>,
}

impl Interim {
    pub fn new(header: &str) -> Interim {
        Interim {
            header: header.to_ascii_lowercase().into_bytes(),
            also: Vec::new(),
            phase: Phase::Start,
            held: Vec::new(),
        }
    }

    /// As `new`, reusing this parser's buffers.
    pub fn restart(&mut self, header: &str) {
        self.header.clear();
        self.header
            .extend(header.bytes().map(|b| b.to_ascii_lowercase()));
        self.also.clear();
        self.phase = Phase::Start;
        self.held.clear();
        // A connection lives long: what a large block grew is not kept.
        if self.held.capacity() > KEPT_CAPACITY {
            self.held = Vec::new();
        }
    }

    /// Removes `header` too from the blocks still to come.
    pub fn also_strip(&mut self, header: &str) {
        if !header.eq_ignore_ascii_case(std::str::from_utf8(&self.header).unwrap_or_default()) {
            self.also.clear();
            self.also
                .extend(header.bytes().map(|b| b.to_ascii_lowercase()));
        }
    }

    /// Nothing more will be changed: the rest passes untouched.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Whether bytes are held back, waiting for the rest of their block.
    #[cfg(test)]
    pub fn is_holding(&self) -> bool {
        !self.held.is_empty()
    }

    /// Reads `input` and appends to `out` what may go to the client now.
    /// `on_event` hears of each whole block (and returns header lines, no
    /// line ends, to add to it) and of each block too large to inspect.
    pub fn feed(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        on_event: &mut dyn FnMut(Event) -> Vec<String>,
    ) {
        if self.phase == Phase::Done {
            out.extend_from_slice(input);
            return;
        }
        let searched = self.held.len().saturating_sub(3);
        self.held.extend_from_slice(input);
        let mut searched = searched;
        loop {
            match self.phase {
                Phase::Done => {
                    out.append(&mut self.held);
                    return;
                }
                Phase::Start => match status_line(&self.held) {
                    StatusLine::Incomplete => return,
                    StatusLine::NotInterim => self.phase = Phase::Done,
                    StatusLine::Interim(status) => self.phase = Phase::Interim(status),
                },
                Phase::Interim(status) => {
                    let Some(end) = block_end(&self.held, searched) else {
                        if self.held.len() > MAX_BLOCK {
                            on_event(Event::TooLarge);
                            self.phase = Phase::Done;
                            continue;
                        }
                        return;
                    };
                    let rest = self.held.split_off(end);
                    let block = std::mem::replace(&mut self.held, rest);
                    self.rewrite(&block, out, status, on_event);
                    self.phase = if status == 101 {
                        Phase::Done
                    } else {
                        Phase::Start
                    };
                    searched = 0;
                }
            }
        }
    }

    /// A flush, the end of a stream or a bucket that is not in memory came
    /// while bytes were held: a well-formed interim block never spans one,
    /// so what is held goes out as it is and the watch ends.
    pub fn give_up(&mut self, out: &mut Vec<u8>) {
        if !self.held.is_empty() {
            out.append(&mut self.held);
            self.phase = Phase::Done;
        }
    }

    /// Ends the watch at once (the final response is under way).
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.held);
        self.phase = Phase::Done;
    }

    /// Copies one whole block to `out` without the update header's lines
    /// (and their continuation lines), adding the caller's lines at the end.
    fn rewrite(
        &self,
        block: &[u8],
        out: &mut Vec<u8>,
        status: u16,
        on_event: &mut dyn FnMut(Event) -> Vec<String>,
    ) {
        let mut lines = block.split_inclusive(|&c| c == b'\n');
        let status_line = lines.next().unwrap_or_default();
        out.extend_from_slice(status_line);
        let mut kept = Vec::with_capacity(block.len());
        let mut blank: &[u8] = b"\r\n";
        let mut removed = 0;
        let mut dropping = false;
        for line in lines {
            if line == b"\r\n" || line == b"\n" {
                blank = line;
                break;
            }
            if line.first().is_some_and(|&c| c == b' ' || c == b'\t') {
                if !dropping {
                    kept.extend_from_slice(line);
                }
                continue;
            }
            let name = line.split(|&c| c == b':').next().unwrap_or_default();
            let name = name.trim_ascii();
            dropping = line.contains(&b':')
                && (name.eq_ignore_ascii_case(&self.header)
                    || (!self.also.is_empty() && name.eq_ignore_ascii_case(&self.also)));
            if dropping {
                removed += 1;
            } else {
                kept.extend_from_slice(line);
            }
        }
        out.extend_from_slice(&kept);
        for extra in on_event(Event::Block { status, removed }) {
            out.extend_from_slice(extra.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(blank);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks` one by one; returns the output and the events.
    fn run(chunks: &[&[u8]]) -> (Vec<u8>, Vec<Event>, Interim) {
        let mut p = Interim::new("X-RSession");
        let mut out = Vec::new();
        let mut events = Vec::new();
        for c in chunks {
            p.feed(c, &mut out, &mut |e| {
                events.push(e);
                Vec::new()
            });
        }
        (out, events, p)
    }

    #[test]
    fn strips_the_update_header_from_a_101_and_stops_watching() {
        let input = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nx-rsession: set a=1\r\nConnection: Upgrade\r\n\r\n\x81\x05hello";
        let (out, events, p) = run(&[input]);
        assert_eq!(
            out,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x05hello"
        );
        assert_eq!(
            events,
            vec![Event::Block {
                status: 101,
                removed: 1
            }]
        );
        assert!(p.is_done());
    }

    #[test]
    fn every_split_of_the_input_gives_the_same_output() {
        let input: &[u8] = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\nX-RSession: set h=1\r\n  folded\r\nX-RSession-Id: kept\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nX-RSession: final\r\n\r\nbody";
        let want = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\nX-RSession-Id: kept\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nX-RSession: final\r\n\r\nbody";
        for split in 0..=input.len() {
            let (a, b) = input.split_at(split);
            let (out, events, p) = run(&[a, b]);
            assert_eq!(out, want, "split at {split}");
            assert_eq!(events.len(), 2, "split at {split}");
            assert!(p.is_done(), "the 200 ends the watch");
        }
    }

    #[test]
    fn a_second_name_is_removed_too_until_the_next_restart() {
        let mut p = Interim::new("X-RSession");
        p.also_strip("X-App");
        let mut out = Vec::new();
        let mut removed = Vec::new();
        p.feed(
            b"HTTP/1.1 103 Early\r\nx-app: set a=1\r\nLink: </s.css>\r\nX-RSession: set b=2\r\n\r\n",
            &mut out,
            &mut |e| {
                removed.push(e);
                Vec::new()
            },
        );
        assert_eq!(out, b"HTTP/1.1 103 Early\r\nLink: </s.css>\r\n\r\n");
        assert_eq!(
            removed,
            vec![Event::Block {
                status: 103,
                removed: 2
            }]
        );
        p.restart("X-RSession");
        let mut out = Vec::new();
        p.feed(
            b"HTTP/1.1 103 Early\r\nX-App: kept\r\n\r\n",
            &mut out,
            &mut |_| Vec::new(),
        );
        assert_eq!(out, b"HTTP/1.1 103 Early\r\nX-App: kept\r\n\r\n");
    }

    #[test]
    fn a_restarted_parser_gives_back_what_a_large_block_took() {
        let mut block = b"HTTP/1.1 103 Early\r\nX-Big: ".to_vec();
        block.resize(MAX_BLOCK + 10, b'a');
        let (out, events, mut p) = run(&[&block]);
        assert_eq!(out, block);
        assert_eq!(events, vec![Event::TooLarge]);
        p.restart("X-RSession");
        assert!(p.held.capacity() <= KEPT_CAPACITY);
    }

    #[test]
    fn a_restarted_parser_is_a_new_one() {
        // One that stopped holding half a block, and one that was done.
        for first in [
            &b"HTTP/1.1 103 Early\r\nX-Old: 1"[..],
            b"HTTP/1.1 200 OK\r\n\r\n",
        ] {
            let (_, _, mut p) = run(&[first]);
            p.restart("X-Other");
            let mut out = Vec::new();
            let mut removed = Vec::new();
            p.feed(
                b"HTTP/1.1 101 Up\r\nX-RSession: set a=1\r\nx-other: set b=2\r\n\r\nws",
                &mut out,
                &mut |e| {
                    removed.push(e);
                    Vec::new()
                },
            );
            assert_eq!(out, b"HTTP/1.1 101 Up\r\nX-RSession: set a=1\r\n\r\nws");
            assert_eq!(
                removed,
                vec![Event::Block {
                    status: 101,
                    removed: 1
                }]
            );
        }
    }

    #[test]
    fn a_final_response_or_other_bytes_pass_untouched() {
        for input in [
            &b"HTTP/1.1 200 OK\r\nX-RSession: set a=1\r\n\r\n"[..],
            b"garbage",
            b"HTTP/1.1 2",
        ] {
            let (a, b) = input.split_at(input.len() / 2);
            let (out, events, p) = run(&[a, b]);
            if input == b"HTTP/1.1 2" {
                // Undecided: held until more comes or a flush gives up.
                assert!(p.is_holding());
                continue;
            }
            assert_eq!(out, input);
            assert!(events.is_empty());
            assert!(p.is_done());
        }
    }

    #[test]
    fn lines_from_the_caller_join_the_block() {
        let mut p = Interim::new("x-rsession");
        let mut out = Vec::new();
        p.feed(b"HTTP/1.1 101 Switching\n\nrest", &mut out, &mut |_| {
            vec!["Set-Cookie: sid=x".into()]
        });
        assert_eq!(out, b"HTTP/1.1 101 Switching\nSet-Cookie: sid=x\r\n\nrest");
    }

    #[test]
    fn giving_up_releases_what_is_held() {
        let (mut out, _, mut p) = run(&[b"HTTP/1.1 103 Early\r\nLink: x\r\n"]);
        assert!(out.is_empty());
        p.give_up(&mut out);
        assert_eq!(out, b"HTTP/1.1 103 Early\r\nLink: x\r\n");
        assert!(p.is_done());
    }

    #[test]
    fn an_oversized_block_is_reported_and_passed_on() {
        let mut big = b"HTTP/1.1 103 Early\r\n".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_BLOCK + 1));
        let (out, events, p) = run(&[&big]);
        assert_eq!(out, big);
        assert_eq!(events, vec![Event::TooLarge]);
        assert!(p.is_done());
    }
}
