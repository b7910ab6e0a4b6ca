//! A command's output on stdout. When the reader goes away (`| head`), the
//! command ends quietly with the status a shell expects of a process
//! stopped by SIGPIPE (141), as other Unix tools do, rather than panicking.

use std::io::Write;

/// The exit status of a process ended by SIGPIPE (128 + 13).
pub const BROKEN_PIPE_STATUS: i32 = 141;

/// Writes `args` to stdout; ends the process quietly if the pipe is closed.
pub fn write(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(error) = out.write_fmt(args) {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(BROKEN_PIPE_STATUS);
        }
        eprintln!("error: writing to stdout: {error}");
        std::process::exit(1);
    }
}

/// `print!` that ends the process quietly on a closed pipe.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::stdout::write(format_args!($($arg)*))
    };
}

/// `println!` that ends the process quietly on a closed pipe.
#[macro_export]
macro_rules! outln {
    () => {
        $crate::stdout::write(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::stdout::write(format_args!("{}\n", format_args!($($arg)*)))
    };
}
