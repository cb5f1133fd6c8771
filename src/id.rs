//! Random ids and their one shape. Stream, conversation and instance ids are 128 bits from the
//! operating system's secure generator, written as 32 lowercase hex digits: whoever holds a stream's
//! or a conversation's id can read it, so it must not be guessable. Every check of an id's shape is
//! [`is_valid`].

/// A new id.
pub fn new() -> String {
    let mut bytes = [0_u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // No secure randomness at all is not a state to serve from.
        std::process::abort();
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(32);
    for b in bytes {
        id.push(char::from(HEX[usize::from(b >> 4)]));
        id.push(char::from(HEX[usize::from(b & 15)]));
    }
    id
}

/// Whether `text` has the shape [`new`] makes: exactly 32 lowercase hex digits.
pub fn is_valid(text: &str) -> bool {
    text.len() == 32 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_id_has_the_one_shape_and_differs_each_time() {
        let (a, b) = (new(), new());
        assert!(is_valid(&a) && is_valid(&b), "{a} {b}");
        assert_ne!(a, b);
    }

    #[test]
    fn only_32_lowercase_hex_digits_are_an_id() {
        assert!(is_valid("0123456789abcdef0123456789abcdef"));
        for bad in [
            "",
            "0123456789abcdef",
            "0123456789ABCDEF0123456789ABCDEF",
            "0123456789abcdef0123456789abcdef0",
            "0123456789abcdeg0123456789abcdef",
            "0123456789abcdef0123456789abcde\u{e9}",
        ] {
            assert!(!is_valid(bad), "{bad:?}");
        }
    }
}
