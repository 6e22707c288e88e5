//! Stand-in for the journal's write probe until the journal branch lands.
use super::{JResult, Journal};

impl Journal {
    /// Commit one tiny write, so that a full disk or a read-only journal fails here.
    pub fn probe_write(&mut self) -> JResult<()> {
        let tx = self.db.transaction()?;
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS probe(id INTEGER PRIMARY KEY CHECK(id=1), n INTEGER NOT NULL);
             INSERT INTO probe(id, n) VALUES(1, 1) ON CONFLICT(id) DO UPDATE SET n = n + 1;",
        )?;
        tx.commit()
    }
}
