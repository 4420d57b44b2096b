//! `resources.pack`: how many trials of one shape train together (a number or `auto`).

use std::fmt;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// `resources.pack`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PackSize {
    #[default]
    Auto,
    Count(usize),
}

impl PackSize {
    pub fn is_auto(&self) -> bool {
        *self == PackSize::Auto
    }
}

impl Serialize for PackSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            PackSize::Auto => s.serialize_str("auto"),
            PackSize::Count(n) => s.serialize_u64(*n as u64),
        }
    }
}

impl<'de> Deserialize<'de> for PackSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = PackSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number of trials (at least 1) or \"auto\"")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<PackSize, E> {
                match n {
                    0 => Err(E::custom("a pack holds at least 1 trial")),
                    n => Ok(PackSize::Count(n as usize)),
                }
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<PackSize, E> {
                match u64::try_from(n) {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::custom("a pack holds at least 1 trial")),
                }
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<PackSize, E> {
                match s {
                    "auto" => Ok(PackSize::Auto),
                    other => Err(E::custom(format!(
                        "`{other}`: expected a number of trials or \"auto\""
                    ))),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}
