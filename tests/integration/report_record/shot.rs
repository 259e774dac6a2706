//! Looking at a page in a real browser: headless Chromium (Debian's `chromium`) takes a
//! screenshot, and a small PNG decoder (flate2 does the inflating) turns it into pixels
//! that tests search for colours: where a colour's pixels are (a bounding box), inside a
//! region such as the timeline's frame.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::Sandbox;

/// The browser: `$CHROMIUM`, else `chromium` (or `chromium-browser`) on PATH.
pub fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return Some(p.into());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|d| [d.join("chromium"), d.join("chromium-browser")])
        .find(|p| p.is_file())
}

/// A screenshot of `page` at 1100 px wide (tall enough for a record's page), scale 1.
pub fn screenshot(browser: &Path, sb: &Sandbox, page: &Path) -> Shot {
    let png = sb.path("shot.png");
    let profile = sb.path("chromium-profile");
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--force-device-scale-factor=1",
            "--window-size=1100,1500",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", page.display()))
        // Its caches and crash dumps stay in the sandbox.
        .env("HOME", sb.path("chromium-home"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let t0 = Instant::now();
    loop {
        if child.try_wait().expect("wait for chromium").is_some() {
            break;
        }
        if t0.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium took more than 120 s to take the screenshot");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let bytes = std::fs::read(&png).expect("chromium wrote the screenshot");
    Shot::decode(&bytes)
}

#[derive(Debug, Clone, Copy)]
pub struct BBox {
    pub x0: u32,
    pub y0: u32,
    /// Exclusive.
    pub x1: u32,
    pub y1: u32,
}

impl BBox {
    pub fn w(&self) -> u32 {
        self.x1 - self.x0
    }
}

pub struct Shot {
    pub w: u32,
    pub h: u32,
    px: Vec<[u8; 3]>,
}

impl Shot {
    /// PNG, 8 bits per channel, RGB or RGBA, not interlaced (what Chromium writes).
    pub fn decode(png: &[u8]) -> Shot {
        use std::io::Read;
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG file");
        let (mut pos, mut idat) = (8, vec![]);
        let (mut w, mut h, mut channels) = (0u32, 0u32, 0usize);
        while pos + 8 <= png.len() {
            let len = u32::from_be_bytes(png[pos..pos + 4].try_into().unwrap()) as usize;
            let kind = &png[pos + 4..pos + 8];
            let body = &png[pos + 8..pos + 8 + len];
            match kind {
                b"IHDR" => {
                    w = u32::from_be_bytes(body[0..4].try_into().unwrap());
                    h = u32::from_be_bytes(body[4..8].try_into().unwrap());
                    assert_eq!((body[8], body[12]), (8, 0), "8-bit, not interlaced");
                    channels = match body[9] {
                        2 => 3,
                        6 => 4,
                        t => panic!("PNG colour type {t}"),
                    };
                }
                b"IDAT" => idat.extend_from_slice(body),
                _ => {}
            }
            pos += 12 + len;
        }
        let mut raw = vec![];
        flate2::read::ZlibDecoder::new(&idat[..])
            .read_to_end(&mut raw)
            .expect("the PNG's image data inflates");
        let stride = w as usize * channels;
        let mut prev = vec![0u8; stride];
        let mut px = Vec::with_capacity((w * h) as usize);
        for row in raw.chunks(stride + 1).take(h as usize) {
            let (filter, data) = (row[0], &row[1..]);
            let mut cur = data.to_vec();
            for i in 0..stride {
                let a = if i >= channels {
                    cur[i - channels] as i16
                } else {
                    0
                };
                let b = prev[i] as i16;
                let c = if i >= channels {
                    prev[i - channels] as i16
                } else {
                    0
                };
                let pred = match filter {
                    0 => 0,
                    1 => a,
                    2 => b,
                    3 => (a + b) / 2,
                    4 => {
                        let p = a + b - c;
                        let (pa, pb, pc) = ((p - a).abs(), (p - b).abs(), (p - c).abs());
                        if pa <= pb && pa <= pc {
                            a
                        } else if pb <= pc {
                            b
                        } else {
                            c
                        }
                    }
                    f => panic!("PNG filter {f}"),
                };
                cur[i] = cur[i].wrapping_add(pred as u8);
            }
            px.extend(cur.chunks(channels).map(|p| [p[0], p[1], p[2]]));
            prev = cur;
        }
        assert_eq!(px.len(), (w * h) as usize, "every row decoded");
        Shot { w, h, px }
    }

    fn at(&self, x: u32, y: u32) -> [u8; 3] {
        self.px[(y * self.w + x) as usize]
    }

    /// How many colours the page has (a blank or failed page has one or two).
    pub fn distinct_colours(&self) -> usize {
        let mut seen: Vec<[u8; 3]> = self.px.clone();
        seen.sort();
        seen.dedup();
        seen.len()
    }

    /// Where the pixels of colour `c` (±3 per channel) are inside `r` (the whole page: None).
    pub fn bbox_in(&self, c: [u8; 3], r: Option<BBox>) -> Option<BBox> {
        let r = r.unwrap_or(BBox {
            x0: 0,
            y0: 0,
            x1: self.w,
            y1: self.h,
        });
        let near = |p: [u8; 3]| (0..3).all(|i| p[i].abs_diff(c[i]) <= 3);
        let mut b: Option<BBox> = None;
        for y in r.y0..r.y1.min(self.h) {
            for x in r.x0..r.x1.min(self.w) {
                if near(self.at(x, y)) {
                    let e = b.get_or_insert(BBox {
                        x0: x,
                        y0: y,
                        x1: x + 1,
                        y1: y + 1,
                    });
                    e.x0 = e.x0.min(x);
                    e.x1 = e.x1.max(x + 1);
                    e.y0 = e.y0.min(y);
                    e.y1 = e.y1.max(y + 1);
                }
            }
        }
        b
    }
}
