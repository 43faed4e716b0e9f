//! Progress of long CLI work (downloads, quantization) on stderr: bars on a terminal,
//! plain lines otherwise (logs, CI, pipes), so output stays readable in both.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{HumanBytes, ProgressBar, ProgressStyle};

use crate::console::errln;
use crate::store::pull::{PullEvent, Reporter};

pub struct Printer {
    tty: bool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    bars: HashMap<String, ProgressBar>,
    /// Plain mode: the last quarter printed per file.
    quarters: HashMap<String, u64>,
    spinner: Option<ProgressBar>,
}

impl Printer {
    pub fn new() -> Arc<Printer> {
        Arc::new(Printer { tty: std::io::stderr().is_terminal(), state: Mutex::new(State::default()) })
    }

    pub fn reporter(self: &Arc<Self>) -> Reporter {
        let me = self.clone();
        Arc::new(move |e| me.event(e))
    }

    fn event(&self, e: PullEvent) {
        let mut st = self.state.lock().unwrap();
        match e {
            PullEvent::Status(s) => {
                if let Some(sp) = st.spinner.take() {
                    sp.finish_and_clear();
                }
                // "pulling FILE" is shown by the file's own bar or lines.
                if s.starts_with("pulling ") && s != "pulling manifest" {
                    return;
                }
                if self.tty && s.starts_with("quantizing") {
                    let sp = ProgressBar::new_spinner().with_message(s);
                    sp.enable_steady_tick(Duration::from_millis(120));
                    st.spinner = Some(sp);
                } else {
                    errln!("{s}");
                }
            }
            PullEvent::File { file, completed, total } => {
                if self.tty {
                    let bar = st.bars.entry(file.clone()).or_insert_with(|| {
                        let bar = ProgressBar::new(total);
                        bar.set_style(
                            ProgressStyle::with_template(
                                "{msg:30} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
                            )
                            .expect("valid template")
                            .progress_chars("=> "),
                        );
                        bar.set_message(file.clone());
                        bar
                    });
                    bar.set_length(total);
                    bar.set_position(completed);
                    if completed >= total {
                        bar.finish();
                    }
                } else {
                    let quarter = (completed * 4).checked_div(total).unwrap_or(4);
                    let last = st.quarters.get(&file).copied();
                    if last.is_none() || last.is_some_and(|q| quarter > q) {
                        st.quarters.insert(file.clone(), quarter);
                        errln!("{file}: {}% ({} of {})", quarter * 25, HumanBytes(completed), HumanBytes(total));
                    }
                }
            }
        }
    }

    pub fn finish(&self) {
        let mut st = self.state.lock().unwrap();
        if let Some(sp) = st.spinner.take() {
            sp.finish_and_clear();
        }
    }
}
