//! Values quoted in error messages: escaped, and cut short, because a
//! message may travel in a gRPC header and a refused 100 KiB value must not
//! come back in it.

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
