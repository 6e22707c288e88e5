//! The journal is the `sscard-journal` crate, shared with `sscard audit verify` and
//! `sscard backup`; it is re-exported here whole, so `crate::journal::Journal` and the
//! rest keep their paths. What is the daemon's own is reading a blacklist file, by the
//! API's rules for cards and dates.

pub use sscard_journal::*;

/// Parse a blacklist file: `card,reason,until` a line (`until` `YYYY-MM-DD` or empty),
/// `#` comments and blank lines ignored. Errors name the line. Cards follow the API's
/// rule (`blacklist.add`: letters and digits, a 32-digit card id upper-cased) and
/// `until` is exactly `YYYY-MM-DD` (it is compared as text). Reasons are cleaned and
/// bounded ([`crate::text::clean_reason`]) rather than refused, since refusing the
/// entry would let the card through.
pub fn parse_blacklist(text: &str) -> Result<Vec<BlacklistEntry>, String> {
    use serde::de::IntoDeserializer;
    use serde::Deserialize;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut f = line.splitn(3, ',').map(str::trim);
        let card = f.next().unwrap_or_default();
        let reason = f.next().unwrap_or_default();
        let until = f.next().unwrap_or_default();
        if card.is_empty() || reason.is_empty() {
            return Err(format!("line {}: card,reason[,until] expected", i + 1));
        }
        let card = crate::methods::params::BlacklistCard::deserialize(IntoDeserializer::<
            serde::de::value::Error,
        >::into_deserializer(
            card
        ))
        .map_err(|e| format!("line {}: card: {e}", i + 1))?
        .0;
        let until = if until.is_empty() {
            None
        } else {
            crate::methods::params::strict_date(until)
                .ok_or_else(|| format!("line {}: until {until:?} is not YYYY-MM-DD", i + 1))?;
            Some(until.to_string())
        };
        let mut reason = crate::text::clean_reason(reason);
        if reason.is_empty() {
            reason = "(no readable reason)".into();
        }
        out.push(BlacklistEntry {
            card,
            reason,
            until,
            source: "file".into(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `blacklist` fuzz target (docs/fuzzing.md): cards with any bytes and
    /// `until` dates that chrono reads but that compare wrongly as text (`026-03-01`,
    /// `2026-2-1`) were accepted (and reasons with control characters, cleaned now).
    #[test]
    fn blacklist_file_cards_dates_and_reasons_are_checked() {
        assert!(parse_blacklist("F0.iost,lost\n")
            .unwrap_err()
            .starts_with("line 1: card"));
        assert!(parse_blacklist("\0\0o,lost\n").is_err());
        for d in ["026-03-01", "2026-2-1", "+10000-01-01", "2026-02-30"] {
            let e = parse_blacklist(&format!("A1,lost,{d}\n")).unwrap_err();
            assert!(e.starts_with("line 1: until"), "{d}: {e}");
        }
        let file = parse_blacklist(
            "0123456789abcdef0123456789abcdef,lost\u{1b}[31m  red \u{202e}x,2026-02-01\n",
        )
        .unwrap();
        assert_eq!(file[0].card, "0123456789ABCDEF0123456789ABCDEF");
        assert_eq!(file[0].reason, "lost [31m red x");
        assert_eq!(file[0].until.as_deref(), Some("2026-02-01"));
        let long = parse_blacklist(&format!("A1,{}\n", "x".repeat(60_000))).unwrap();
        assert_eq!(long[0].reason.chars().count(), crate::text::MAX_REASON);
    }

    #[test]
    fn blacklist_by_number_or_id_until_a_day() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(&dir.path().join("j.db")).unwrap();
        let e = |card: &str, until: Option<&str>| BlacklistEntry {
            card: card.into(),
            reason: "lost".into(),
            until: until.map(str::to_string),
            source: "admin".into(),
        };
        j.blacklist_add(&e("A1", Some("2026-11-23"))).unwrap();
        assert_eq!(
            j.blacklisted("A1", "X", "2026-11-23").unwrap().as_deref(),
            Some("lost")
        );
        assert_eq!(j.blacklisted("A1", "X", "2026-11-24").unwrap(), None);
        let file = parse_blacklist("# c\nID9, stolen ,\nA1,other,2027-01-01\n").unwrap();
        j.blacklist_import(&file).unwrap();
        assert!(j.blacklisted("Z", "ID9", "2030-01-01").unwrap().is_some());
        // the admin's entry for A1 stays as it was
        assert_eq!(j.blacklisted("A1", "X", "2026-11-24").unwrap(), None);
        j.blacklist_import(&[]).unwrap();
        assert!(j.blacklisted("Z", "ID9", "2030-01-01").unwrap().is_none());
        assert!(j.blacklist_remove("A1").unwrap());
        assert!(j.blacklist().unwrap().is_empty());
        assert!(parse_blacklist("A1,lost,2026-13-01")
            .unwrap_err()
            .starts_with("line 1"));
        assert!(parse_blacklist("\nA1").unwrap_err().starts_with("line 2"));
    }

    #[test]
    fn a_blacklist_file_reason_is_cleaned_and_bounded_and_the_card_still_listed() {
        let long = format!(
            "\u{1b}[31mstolen\u{202e}{}\u{7}",
            "x\u{1b}[2J".repeat(15_000)
        );
        assert!(long.chars().count() >= 60_000);
        let e = parse_blacklist(&format!("A77,{long},\n")).unwrap();
        assert_eq!(e.len(), 1);
        let r = &e[0].reason;
        assert!(r.starts_with("[31mstolenx [2Jx [2J"), "{r}");
        assert!(r.chars().count() <= crate::text::MAX_REASON);
        assert!(!r.chars().any(crate::text::is_hidden));
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(&dir.path().join("j.db")).unwrap();
        j.blacklist_import(&e).unwrap();
        assert_eq!(
            j.blacklisted("A77", "X", "2030-01-01").unwrap().as_deref(),
            Some(r.as_str())
        );
        // a reason of nothing but control characters still lists the card
        let e = parse_blacklist("A78,\u{1b}\u{7},").unwrap();
        assert_eq!(e[0].reason, "(no readable reason)");
    }
}
