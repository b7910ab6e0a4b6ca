//! Values quoted in error messages: escaped, and cut short, because a
//! message may travel in a gRPC header and a refused 100 KiB value must not
//! come back in it.

/// An error and every cause under it, joined with ": ", for messages that
/// must say why something failed, not only that it did. A cause whose text
/// the message already holds (wrappers often repeat their source) is left out.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// How much of a refused value an error message quotes.
pub const SHOWN_BYTES: usize = 64;

/// `value` escaped and cut to at most [`SHOWN_BYTES`] (then marked with `…`).
pub fn shown(value: &str) -> String {
    let escaped: String = value.escape_debug().collect();
    if escaped.len() <= SHOWN_BYTES {
        return escaped;
    }
    let mut end = SHOWN_BYTES;
    while !escaped.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &escaped[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_and_odd_values_are_cut_and_escaped() {
        assert_eq!(shown("a\nb"), "a\\nb");
        let long = "é".repeat(100);
        let cut = shown(&long);
        assert!(cut.ends_with('…') && cut.len() <= SHOWN_BYTES + '…'.len_utf8());
    }
}
