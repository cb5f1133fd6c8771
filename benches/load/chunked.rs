//! A response's body as a raw HTTP/1.1 client reads it: past the head, and out of the chunked
//! framing when there is one, so that a token split by a proxy's own chunk boundaries (nginx
//! re-chunks what it relays at its buffer's edges) is still counted once.

pub struct Body {
    /// The head so far, until its blank line.
    head: Option<Vec<u8>>,
    chunked: bool,
    state: Chunk,
}

enum Chunk {
    /// A chunk's size line (hex digits, maybe an extension after `;`).
    Size {
        size: usize,
        extension: bool,
    },
    Data(usize),
    /// The CRLF after a chunk's data.
    DataEnd,
    Done,
}

impl Body {
    pub fn new() -> Self {
        Self {
            head: Some(Vec::new()),
            chunked: false,
            state: Chunk::Size {
                size: 0,
                extension: false,
            },
        }
    }

    /// Passes the body's bytes in `bytes` to `out`.
    pub fn feed(&mut self, mut bytes: &[u8], out: &mut impl FnMut(&[u8])) {
        if let Some(head) = &mut self.head {
            let before = head.len();
            head.extend_from_slice(bytes);
            let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
                return;
            };
            let text = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
            self.chunked = text
                .lines()
                .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
            bytes = &bytes[(end + 4).saturating_sub(before)..];
            self.head = None;
        }
        if !self.chunked {
            out(bytes);
            return;
        }
        while let Some((&b, rest)) = bytes.split_first() {
            match &mut self.state {
                Chunk::Size { size, extension } => {
                    bytes = rest;
                    match b {
                        b'\n' if *size == 0 => self.state = Chunk::Done,
                        b'\n' => self.state = Chunk::Data(*size),
                        b';' => *extension = true,
                        _ if *extension => {}
                        _ => {
                            if let Some(digit) = char::from(b).to_digit(16) {
                                *size = *size * 16 + digit as usize;
                            }
                        }
                    }
                }
                Chunk::Data(left) => {
                    let take = (*left).min(bytes.len());
                    out(&bytes[..take]);
                    bytes = &bytes[take..];
                    *left -= take;
                    if *left == 0 {
                        self.state = Chunk::DataEnd;
                    }
                }
                Chunk::DataEnd => {
                    bytes = rest;
                    if b == b'\n' {
                        self.state = Chunk::Size {
                            size: 0,
                            extension: false,
                        };
                    }
                }
                Chunk::Done => return,
            }
        }
    }
}
