//! Where a command reads and writes: the process's stdin/stdout/stderr, or
//! in-memory buffers in tests. Commands never touch `std::io` directly, so
//! every byte they print can be asserted on.

use std::io::{self, IsTerminal, Read, Write};
use std::sync::{Arc, Mutex};

/// A command's standard streams.
pub struct Terminal {
    /// Results: tables, JSON, YAML, final lines.
    pub out: Box<dyn Write + Send>,
    /// Progress, notes, and log lines an instance wrote to its stderr.
    pub err: Box<dyn Write + Send>,
    input: Box<dyn Read + Send>,
    /// True when input is a terminal a person types into.
    interactive: bool,
}

impl Terminal {
    /// The process's own standard streams.
    pub fn std() -> Self {
        Self {
            out: Box::new(io::stdout()),
            err: Box::new(io::stderr()),
            input: Box::new(io::stdin()),
            interactive: io::stdin().is_terminal(),
        }
    }

    /// In-memory streams: `input` is what standard input holds; the returned
    /// [`Captured`] reads back what was written.
    pub fn captured(input: impl Into<Vec<u8>>) -> (Self, Captured) {
        let captured = Captured::default();
        let terminal = Self {
            out: Box::new(SharedBuf(captured.out.clone())),
            err: Box::new(SharedBuf(captured.err.clone())),
            input: Box::new(io::Cursor::new(input.into())),
            interactive: false,
        };
        (terminal, captured)
    }

    /// Reads a secret: from the terminal without echo when a person types it
    /// (prompting on stderr), else all of standard input with one trailing
    /// newline removed (as `echo value |` adds one).
    pub fn read_secret(&mut self, prompt: &str) -> io::Result<String> {
        if self.interactive {
            self.err.flush()?;
            return rpassword::prompt_password(prompt);
        }
        let mut value = String::new();
        self.input.read_to_string(&mut value)?;
        if value.ends_with('\n') {
            value.pop();
            if value.ends_with('\r') {
                value.pop();
            }
        }
        Ok(value)
    }

    /// All of standard input, byte for byte (`bora sandboxes cp - ID:/path`).
    pub fn read_input(&mut self) -> io::Result<Vec<u8>> {
        let mut data = Vec::new();
        self.input.read_to_end(&mut data)?;
        Ok(data)
    }
}

/// What a [`Terminal::captured`] terminal was given to write.
#[derive(Clone, Default)]
pub struct Captured {
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
}

impl Captured {
    /// Everything written to standard output so far.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&lock(&self.out)).into_owned()
    }

    /// Everything written to standard error so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&lock(&self.err)).into_owned()
    }
}

fn lock(buf: &Mutex<Vec<u8>>) -> std::sync::MutexGuard<'_, Vec<u8>> {
    // A panic while holding the lock leaves plain bytes behind; still readable.
    buf.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        lock(&self.0).extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_both_streams() {
        let (mut t, c) = Terminal::captured("");
        writeln!(t.out, "to out").unwrap();
        writeln!(t.err, "to err").unwrap();
        assert_eq!(c.stdout(), "to out\n");
        assert_eq!(c.stderr(), "to err\n");
    }

    #[test]
    fn secret_from_piped_input_loses_one_trailing_newline() {
        for (input, want) in [
            ("s3cret\n", "s3cret"),
            ("s3cret\r\n", "s3cret"),
            ("s3cret", "s3cret"),
            ("two\nlines\n\n", "two\nlines\n"),
        ] {
            let (mut t, c) = Terminal::captured(input);
            assert_eq!(t.read_secret("value: ").unwrap(), want);
            assert_eq!(c.stderr(), "", "no prompt when not interactive");
        }
    }
}
