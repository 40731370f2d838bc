//! The owner-table fixture of the property and transition tests: one
//! owner (lp0) with two memory regions, three clients (lp1..lp3), everyone
//! authorized to share with everyone, deterministic cookies.

use lparhv::owner::*;

pub const PAGE: u64 = PAGE_SIZE;
pub const R1: ResourceId = ResourceId(1);
pub const R2: ResourceId = ResourceId(2);

pub struct Fixture {
    pub t: OwnerTable,
    pub rng: SeededCookieSource,
    pub parts: Vec<PartitionRef>,
}

impl Fixture {
    pub fn new() -> Self {
        let mut t = OwnerTable::new(TableConfig::default()).unwrap();
        let parts: Vec<PartitionRef> = (0..4).map(|i| t.register_partition(PartitionId(i)).unwrap()).collect();
        for a in 0..4 {
            for b in 0..4 {
                if a != b {
                    t.allow_sharing(PartitionId(a), PartitionId(b)).unwrap();
                }
            }
        }
        t.add_resource(PartitionId(0), R1, ResourceKind::MemoryRegion, 16 * PAGE).unwrap();
        t.add_resource(PartitionId(0), R2, ResourceKind::MemoryRegion, 4 * PAGE).unwrap();
        t.audit().unwrap();
        Fixture { t, rng: SeededCookieSource::new(42), parts }
    }

    pub fn owner(&self) -> PartitionRef {
        self.t.current_ref(PartitionId(0)).unwrap()
    }

    pub fn p(&self, i: u32) -> PartitionRef {
        self.t.current_ref(PartitionId(i)).unwrap()
    }

    pub fn try_grant(
        &mut self,
        granter: PartitionRef,
        source: GrantSource,
        client: u32,
        offset: u64,
        length: u64,
        access: Access,
    ) -> Result<GrantReceipt, HvError> {
        let request = GrantRequest { source, client: PartitionId(client), offset, length, access };
        let result = self.t.grant(&mut self.rng, granter, request);
        self.t.audit().unwrap();
        result
    }

    /// Owner grants `pages` pages of R1 at `offset_pages`, read-write.
    pub fn grant_r1(&mut self, client: u32, offset_pages: u64, pages: u64) -> GrantReceipt {
        let owner = self.owner();
        self.try_grant(owner, GrantSource::Owned(R1), client, offset_pages * PAGE, pages * PAGE, Access::ReadWrite).unwrap()
    }

    /// `granter` re-grants part of a cookie it accepted.
    pub fn sub_grant(&mut self, granter: u32, parent: Cookie, client: u32, offset_pages: u64, pages: u64) -> GrantReceipt {
        let g = self.p(granter);
        self.try_grant(g, GrantSource::Accepted(parent), client, offset_pages * PAGE, pages * PAGE, Access::ReadWrite).unwrap()
    }

    pub fn accept(&mut self, client: u32, cookie: Cookie) -> Result<u64, HvError> {
        let c = self.p(client);
        let r = self.t.accept(c, cookie, Placement::Anywhere).map(|o| o.logical_base);
        self.t.audit().unwrap();
        r
    }

    pub fn ret(&mut self, client: u32, cookie: Cookie) -> Result<ReturnOutcome, HvError> {
        let c = self.p(client);
        let r = self.t.return_grant(c, cookie);
        self.t.audit().unwrap();
        r
    }

    pub fn rescind(&mut self, granter: u32, client: u32, cookie: Cookie, mode: RescindMode) -> Result<Vec<TornDown>, HvError> {
        let g = self.p(granter);
        let r = self.t.rescind(g, PartitionId(client), cookie, mode);
        self.t.audit().unwrap();
        r
    }

    pub fn state(&self, client: u32, cookie: Cookie) -> ClientState {
        self.t.client_state(self.p(client), cookie)
    }

    pub fn read(&self, client: u32, addr: u64, len: u64) -> Result<Translation, ReturnCode> {
        self.t.translate(self.p(client), addr, len, false).map_err(|e| e.code)
    }

    pub fn write(&self, client: u32, addr: u64, len: u64) -> Result<Translation, ReturnCode> {
        self.t.translate(self.p(client), addr, len, true).map_err(|e| e.code)
    }
}
