//! What every benchmark binary shares: its command line (`--quick`, section names) and the
//! build it runs in.

pub struct Args {
    pub quick: bool,
    sections: Vec<String>,
}

impl Args {
    pub fn parse() -> Self {
        let args: Vec<String> = std::env::args().skip(1).collect();
        Self {
            quick: args.iter().any(|a| a == "--quick"),
            sections: args.into_iter().filter(|a| !a.starts_with("--")).collect(),
        }
    }

    /// True if `section` was named, or none was.
    pub fn wants(&self, section: &str) -> bool {
        self.sections.is_empty() || self.sections.iter().any(|s| s == section)
    }
}

pub fn build() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}
