//! haproxy's own view of its servers: the CSV of `show stat` (stats socket) or `/stats;csv`
//! parsed into [`ServerStat`] rows.

use anyhow::{Result, anyhow};

/// One row of haproxy's `show stat` (a server, or a proxy's FRONTEND/BACKEND line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerStat {
    /// Proxy (listen section) name, `pxname`.
    pub proxy: String,
    /// Server name, or `FRONTEND`/`BACKEND`, `svname`.
    pub server: String,
    /// `status`: `UP`, `DOWN`, `UP 1/2` (going down), `DOWN 1/2` (going up), `MAINT`, `OPEN`...
    pub status: String,
    /// `check_status` of the last check, e.g. `L7OK`, `L7STS`, `L4CON`, `L4TOUT`.
    pub check_status: String,
    /// `check_code`: the HTTP status of the last check, if any.
    pub check_code: Option<u16>,
    /// `scur`: current sessions.
    pub sessions: u64,
}

impl ServerStat {
    /// Whether haproxy sends traffic to it (`UP`, also `UP n/m` while going down).
    pub fn is_up(&self) -> bool {
        self.status == "UP" || self.status.starts_with("UP ")
    }

    /// A real server (not the FRONTEND/BACKEND summary line).
    pub fn is_server(&self) -> bool {
        self.server != "FRONTEND" && self.server != "BACKEND"
    }
}

/// Splits one CSV line (haproxy quotes fields containing commas with `"`).
pub fn csv_fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// Parses the CSV of `show stat` or `/stats;csv` (header line `# pxname,svname,...`).
pub fn parse_stat_csv(csv: &str) -> Result<Vec<ServerStat>> {
    let mut lines = csv.lines().filter(|l| !l.trim().is_empty());
    let header = lines.next().ok_or_else(|| anyhow!("empty stats output"))?;
    let header = header
        .strip_prefix("# ")
        .ok_or_else(|| anyhow!("stats output does not start with '# pxname,...': {header:?}"))?;
    let cols = csv_fields(header);
    let col = |name: &str| {
        cols.iter()
            .position(|c| c == name)
            .ok_or_else(|| anyhow!("stats output has no column {name}"))
    };
    let (px, sv, st, cs, cc, scur) = (
        col("pxname")?,
        col("svname")?,
        col("status")?,
        col("check_status")?,
        col("check_code")?,
        col("scur")?,
    );
    let mut out = Vec::new();
    for line in lines {
        let f = csv_fields(line);
        let get = |i: usize| f.get(i).cloned().unwrap_or_default();
        out.push(ServerStat {
            proxy: get(px),
            server: get(sv),
            status: get(st),
            check_status: get(cs),
            check_code: get(cc).parse().ok(),
            sessions: get(scur).parse().unwrap_or(0),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_show_stat() {
        let csv = "# pxname,svname,qcur,qmax,scur,status,check_status,check_code,last_chk\n\
                   postgres_write,FRONTEND,,,0,OPEN,,,\n\
                   postgres_write,node1,0,0,2,UP,L7OK,200,\"OK, fine\"\n\
                   postgres_write,node2,0,0,0,DOWN,L7STS,202,Accepted\n\
                   postgres_write,node3,0,0,0,UP 1/2,L7STS,509,x\n";
        let s = parse_stat_csv(csv).unwrap();
        let servers: Vec<_> = s.iter().filter(|s| s.is_server()).collect();
        assert_eq!(servers.len(), 3);
        assert_eq!(
            (
                servers[0].status.as_str(),
                servers[0].check_code,
                servers[0].sessions
            ),
            ("UP", Some(200), 2)
        );
        assert!(servers[0].is_up() && !servers[1].is_up() && servers[2].is_up());
        assert_eq!(servers[1].check_status, "L7STS");
        assert!(parse_stat_csv("").is_err());
        assert!(parse_stat_csv("pxname\n").is_err());
    }
}
