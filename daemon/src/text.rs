//! Text that the daemon journals: what it refuses and how it cleans what it must keep.
//!
//! Audit entries, blacklist reasons and order ids are read later by people on
//! terminals and in reports. Control characters (escape sequences) and Unicode format
//! characters (bidirectional overrides, zero-width characters) change how text shows
//! without showing, so none of them reaches the journal.

/// The longest blacklist reason, in characters.
pub const MAX_REASON: usize = 200;

/// Unicode format characters (general category Cf): bidirectional overrides,
/// zero-width characters, the BOM and tags.
pub fn is_format(c: char) -> bool {
    matches!(c as u32,
        0x00AD | 0x0600..=0x0605 | 0x061C | 0x06DD | 0x070F | 0x0890..=0x0891 | 0x08E2
        | 0x180E | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x2064 | 0x2066..=0x206F
        | 0xFEFF | 0xFFF9..=0xFFFB | 0x110BD | 0x110CD | 0x13430..=0x1343F
        | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A | 0xE0001 | 0xE0020..=0xE007F)
}

/// Whether `c` may not appear in journaled text.
pub fn is_hidden(c: char) -> bool {
    c.is_control() || is_format(c)
}

/// Check a reason given through the API: at most [`MAX_REASON`] characters, no
/// control or format characters; surrounding spaces are trimmed.
pub fn check_reason(raw: &str) -> Result<String, String> {
    if raw.chars().any(is_hidden) {
        return Err("control or format characters are refused".into());
    }
    let s = raw.trim();
    if s.chars().count() > MAX_REASON {
        return Err(format!("at most {MAX_REASON} characters"));
    }
    Ok(s.to_string())
}

/// Clean a reason read from a blacklist file, where refusing the entry would let the
/// card through: control characters become spaces, format characters go, runs of
/// spaces shrink to one, and the rest is cut at [`MAX_REASON`] characters.
pub fn clean_reason(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len().min(MAX_REASON * 4));
    let mut n = 0;
    let mut space = false;
    for c in raw.chars() {
        if is_format(c) {
            continue;
        }
        if c.is_control() || c.is_whitespace() {
            space = !out.is_empty();
            continue;
        }
        if n + usize::from(space) + 1 > MAX_REASON {
            break;
        }
        if space {
            out.push(' ');
            n += 1;
            space = false;
        }
        out.push(c);
        n += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reasons_from_the_api_are_checked() {
        assert_eq!(check_reason("  lost card ").as_deref(), Ok("lost card"));
        assert!(check_reason("lost\u{1b}[31m").is_err());
        assert!(check_reason("lost\u{202e}drac").is_err());
        assert!(check_reason("zero\u{200b}width").is_err());
        assert!(check_reason(&"x".repeat(MAX_REASON + 1)).is_err());
        assert!(check_reason(&"挂".repeat(MAX_REASON)).is_ok());
    }

    #[test]
    fn reasons_from_a_file_are_cleaned() {
        assert_eq!(
            clean_reason("\u{1b}[2Jlost\t\tcard\u{202e}"),
            "[2Jlost card"
        );
        assert_eq!(clean_reason("   "), "");
        assert_eq!(
            clean_reason(&"y".repeat(60_000)).chars().count(),
            MAX_REASON
        );
    }

    proptest! {
        #[test]
        fn cleaned_reasons_are_bounded_and_visible(s in "\\PC*|[\\x00-\\x1f\\u{200b}-\\u{202e} a-z]*") {
            let c = clean_reason(&s);
            prop_assert!(c.chars().count() <= MAX_REASON);
            prop_assert!(!c.chars().any(is_hidden));
            prop_assert!(!c.starts_with(' ') && !c.ends_with(' '));
            prop_assert!(check_reason(&c).is_ok());
        }
    }
}
