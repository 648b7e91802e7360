//! Human sizes: `4096`, `256k`, `4M`, `1T`, `512KiB` (powers of 1024, as bcachefs-tools reads them).

use crate::error::{ErrCode, Error, Result};

/// Parses a size in bytes with an optional binary suffix (k, M, G, T, P; `B`/`iB` allowed).
pub fn parse_size(s: &str) -> Result<u64> {
    let bad = |why: &str| Error::new(ErrCode::InvalidArgument, format!("invalid size '{s}': {why}"));
    let t = s.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(digits_end);
    if num.is_empty() {
        return Err(bad("expected a number such as 4096, 256k or 4M"));
    }
    let n: u64 = num.parse().map_err(|_| bad("number too large"))?;
    let suffix = suffix.trim_end_matches("iB").trim_end_matches('B');
    let shift = match suffix {
        "" => 0,
        "k" | "K" => 10,
        "m" | "M" => 20,
        "g" | "G" => 30,
        "t" | "T" => 40,
        "p" | "P" => 50,
        _ => return Err(bad("unknown suffix; use k, M, G, T or P")),
    };
    n.checked_mul(1u64 << shift).ok_or_else(|| bad("too large"))
}

/// Prints a size the short way when it is an exact multiple: `4.0M` style is avoided so that
/// the output parses back with [`parse_size`].
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(u32, &str); 5] = [(50, "P"), (40, "T"), (30, "G"), (20, "M"), (10, "k")];
    for (shift, unit) in UNITS {
        let unit_bytes = 1u64 << shift;
        if bytes >= unit_bytes && bytes % unit_bytes == 0 {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes parse with binary suffixes and print back to the same value.
    #[test]
    fn parse_and_format() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("256k").unwrap(), 256 << 10);
        assert_eq!(parse_size("4M").unwrap(), 4 << 20);
        assert_eq!(parse_size("4MiB").unwrap(), 4 << 20);
        assert_eq!(parse_size("1T").unwrap(), 1 << 40);
        for v in [1u64, 4096, 256 << 10, 3 << 20, 1 << 40, 12345] {
            assert_eq!(parse_size(&format_size(v)).unwrap(), v);
        }
        assert!(parse_size("").is_err());
        assert!(parse_size("4X").is_err());
        assert!(parse_size("99999999999999999999").is_err());
        assert!(parse_size("16777216T").is_err());
        assert_eq!(parse_size("x").unwrap_err().code(), ErrCode::InvalidArgument);
    }
}
