//! Enums whose variants carry stable on-disk numbers and bcachefs's names.

/// Declares a `#[repr(u8)]` enum of stable ids: each variant's number is what goes on disk and
/// is never renumbered; its name is bcachefs's. Generates `ALL`, `name`, `from_u8`,
/// `from_name` and `Display`.
macro_rules! stable_ids {
    ($(#[$meta:meta])* pub enum $name:ident { $( $variant:ident = $num:literal, $text:literal; )* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[repr(u8)]
        pub enum $name { $( $variant = $num, )* }

        impl $name {
            pub const ALL: &'static [$name] = &[$( $name::$variant, )*];

            pub const fn name(self) -> &'static str {
                match self { $( $name::$variant => $text, )* }
            }

            pub const fn from_u8(n: u8) -> Option<$name> {
                match n { $( $num => Some($name::$variant), )* _ => None }
            }

            pub fn from_name(s: &str) -> Option<$name> {
                match s { $( $text => Some($name::$variant), )* _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

pub(crate) use stable_ids;
