//! Settings that take one of a fixed list of names (`[model] dtype`, `[dpo] loss_type`, ...).
//! Each has one table of names, read by the config (serde, so an unknown name fails at load), by
//! the flags that take the same values (clap) and by the records that write them back
//! (fingerprints), so the three cannot drift apart.

use std::borrow::Cow;
use std::marker::PhantomData;

pub trait Choice: Copy + PartialEq + Sized + 'static {
    /// Every value with its spellings. The first is the one written back (`Display`, serde,
    /// fingerprints, help); the others are accepted aliases.
    const CHOICES: &'static [(Self, &'static [&'static str])];

    /// The spelling looked up for `raw`. The default is exact; a setting that has always
    /// ignored case or surrounding spaces overrides it.
    fn normalize(raw: &str) -> Cow<'_, str> {
        Cow::Borrowed(raw)
    }

    fn name(self) -> &'static str {
        Self::CHOICES
            .iter()
            .find(|(v, _)| *v == self)
            .map(|(_, names)| names[0])
            .expect("every value is in CHOICES")
    }

    /// The names written back, in the table's order.
    fn names() -> Vec<&'static str> {
        Self::CHOICES.iter().map(|(_, names)| names[0]).collect()
    }

    fn from_name(raw: &str) -> Result<Self, UnknownChoice> {
        let wanted = Self::normalize(raw);
        Self::CHOICES
            .iter()
            .find(|(_, names)| names.contains(&wanted.as_ref()))
            .map(|(v, _)| *v)
            .ok_or_else(|| UnknownChoice {
                value: raw.to_string(),
                expected: Self::names(),
            })
    }
}

/// A name that is none of a setting's; the caller adds which setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownChoice {
    pub value: String,
    pub expected: Vec<&'static str>,
}

impl std::fmt::Display for UnknownChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "unknown value `{}` (expected one of {})",
            self.value,
            self.expected.join(", ")
        )
    }
}

impl std::error::Error for UnknownChoice {}

/// The clap parser of a flag taking a [`Choice`]: the same spellings as the config, and the
/// names listed in `--help` and in clap's own invalid-value error.
pub struct ChoiceParser<T>(PhantomData<fn() -> T>);

impl<T> ChoiceParser<T> {
    pub fn new() -> Self {
        Self(PhantomData)
    }
}

impl<T> Default for ChoiceParser<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Clone for ChoiceParser<T> {
    fn clone(&self) -> Self {
        Self::new()
    }
}

impl<T: Choice + Send + Sync> clap::builder::TypedValueParser for ChoiceParser<T> {
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<T, clap::Error> {
        use clap::error::{ContextKind, ContextValue, ErrorKind};
        let text = value.to_string_lossy();
        T::from_name(&text).map_err(|e| {
            let mut err = clap::Error::new(ErrorKind::InvalidValue).with_cmd(cmd);
            let arg = arg.map_or_else(|| "...".to_string(), |a| a.to_string());
            err.insert(ContextKind::InvalidArg, ContextValue::String(arg));
            err.insert(ContextKind::InvalidValue, ContextValue::String(e.value));
            let expected = e.expected.iter().map(|s| s.to_string()).collect();
            err.insert(ContextKind::ValidValue, ContextValue::Strings(expected));
            err
        })
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new(T::CHOICES.iter().map(|(_, names)| {
            clap::builder::PossibleValue::new(names[0]).aliases(names[1..].iter().copied())
        })))
    }
}

/// `FromStr`, `Display`, serde (as the name) and the clap parser of a [`Choice`] type.
macro_rules! choice_impls {
    ($t:ty) => {
        impl std::str::FromStr for $t {
            type Err = $crate::choice::UnknownChoice;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                <$t as $crate::choice::Choice>::from_name(s)
            }
        }

        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str($crate::choice::Choice::name(*self))
            }
        }

        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str($crate::choice::Choice::name(*self))
            }
        }

        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                <$t as $crate::choice::Choice>::from_name(&raw).map_err(serde::de::Error::custom)
            }
        }

        impl clap::builder::ValueParserFactory for $t {
            type Parser = $crate::choice::ChoiceParser<$t>;
            fn value_parser() -> Self::Parser {
                $crate::choice::ChoiceParser::new()
            }
        }
    };
}
pub(crate) use choice_impls;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Colour {
        Red,
        Blue,
    }

    impl Choice for Colour {
        const CHOICES: &'static [(Self, &'static [&'static str])] =
            &[(Colour::Red, &["red", "rouge"]), (Colour::Blue, &["blue"])];
    }
    choice_impls!(Colour);

    #[test]
    fn aliases_parse_and_the_first_name_is_written() {
        assert_eq!("rouge".parse::<Colour>().unwrap(), Colour::Red);
        assert_eq!(Colour::Red.to_string(), "red");
        assert_eq!(serde_json::to_value(Colour::Blue).unwrap(), "blue");
        let back: Colour = serde_json::from_value("blue".into()).unwrap();
        assert_eq!(back, Colour::Blue);
    }

    #[test]
    fn an_unknown_name_lists_the_names() {
        let err = "green".parse::<Colour>().unwrap_err().to_string();
        assert_eq!(err, "unknown value `green` (expected one of red, blue)");
    }

    #[test]
    fn the_flag_takes_the_same_names() {
        #[derive(clap::Parser, Debug)]
        struct Cli {
            #[arg(long, default_value = "red")]
            colour: Colour,
        }
        use clap::Parser;
        assert_eq!(Cli::parse_from(["x"]).colour, Colour::Red);
        assert_eq!(
            Cli::parse_from(["x", "--colour", "rouge"]).colour,
            Colour::Red
        );
        let err = Cli::try_parse_from(["x", "--colour", "green"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("'green'") && err.contains("--colour") && err.contains("red, blue"),
            "{err}"
        );
    }
}
