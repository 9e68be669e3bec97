//! The interactive chat's screen: lines appear above a `> ` prompt.
//!
//! Line-based, not a full-screen program: when a line arrives, the prompt
//! line is cleared (`\r\x1b[K`), the line printed, and the prompt drawn
//! again. What the person had half typed stays in the terminal's line buffer
//! (Enter still sends all of it) but is no longer on screen. When standard
//! output is not a terminal there is no prompt and no escape sequence.

use std::io::{IsTerminal as _, Write as _};

pub struct Screen {
    tty: bool,
}

impl Screen {
    pub fn new() -> Self {
        Screen {
            tty: std::io::stdout().is_terminal(),
        }
    }

    /// Prints `text` above the prompt.
    pub fn line(&self, text: &str) {
        if self.tty {
            self.write(&format!("\r\x1b[K{text}\n> "));
        } else {
            self.write(&format!("{text}\n"));
        }
    }

    /// Draws the prompt on a fresh line (after the person pressed Enter).
    pub fn prompt(&self) {
        if self.tty {
            self.write("> ");
        }
    }

    /// Leaves the prompt line empty, for what the shell prints next.
    pub fn close(&self) {
        if self.tty {
            self.write("\r\x1b[K");
        }
    }

    /// Writes and flushes; a closed output is not worth failing the chat for.
    fn write(&self, text: &str) {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }
}
