//! 128-bit unique ids for filesystems and member devices.

use std::fmt;
use std::io::Read;

use crate::error::{ErrCode, Error, Result};

#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Uuid(pub [u8; 16]);

impl Uuid {
    pub const NIL: Uuid = Uuid([0; 16]);

    /// A random (version 4) uuid from the kernel's random source. If that cannot be read, the
    /// time and process id are mixed instead: a uuid must be unique, not secret.
    pub fn random() -> Uuid {
        let mut b = [0u8; 16];
        let from_kernel = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).is_ok();
        if !from_kernel {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default();
            let mut rng = crate::rng::Rng::new((nanos as u64) ^ u64::from(std::process::id()));
            rng.fill_bytes(&mut b);
        }
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        Uuid(b)
    }

    /// A uuid drawn from a seeded generator: reproducible images for tests and scenarios.
    pub fn from_rng(rng: &mut crate::rng::Rng) -> Uuid {
        let mut b = [0u8; 16];
        rng.fill_bytes(&mut b);
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        Uuid(b)
    }

    pub fn is_nil(&self) -> bool {
        *self == Uuid::NIL
    }

    /// The first eight bytes as a little-endian u64: the part magic numbers are derived from.
    pub fn low_u64(&self) -> u64 {
        let [a, b, c, d, e, f, g, h, ..] = self.0;
        u64::from_le_bytes([a, b, c, d, e, f, g, h])
    }

    pub fn parse(s: &str) -> Result<Uuid> {
        let hex: Vec<u8> = s.bytes().filter(|&c| c != b'-').collect();
        let bad = || Error::new(ErrCode::InvalidArgument, format!("invalid uuid '{s}'"));
        if hex.len() != 32 {
            return Err(bad());
        }
        let mut out = [0u8; 16];
        for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
            let text = std::str::from_utf8(pair).map_err(|_| bad())?;
            *byte = u8::from_str_radix(text, 16).map_err(|_| bad())?;
        }
        Ok(Uuid(out))
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Printing then parsing gives back the same uuid; random ones differ and are version 4.
    #[test]
    fn display_parse_round_trip() {
        let u = Uuid::random();
        assert_eq!(Uuid::parse(&u.to_string()).unwrap(), u);
        assert_ne!(Uuid::random(), u);
        assert_eq!(u.0[6] >> 4, 4);
        assert_eq!(u.to_string().len(), 36);
        assert!(Uuid::parse("xyz").is_err());
        assert!(Uuid::parse("zz345678-1234-1234-1234-123456789abc").is_err());
    }
}
