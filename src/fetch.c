/*-------------------------------------------------------------------------
 *
 * fetch.c
 *	  The worker's side of the queue: reading a batch of the oldest visible
 *	  events of its partition of twins, and deleting them once consumed.
 *
 * No index.  digitaltwin.events has no primary key (since version 1.12):
 * keeping a btree in id order cost a third of every insert, the largest
 * cost of ingestion after the heap itself.  A fetch reads the queue
 * partitions' pages instead and keeps the 'limit' smallest ids it finds
 * (a bounded max-heap), which is exactly what the index scan in id order
 * returned: the consumption rule of queue.c does not change.
 *
 * The page memo.  Reading every page of the queue for every batch would
 * cost as much as the index saved, so each worker remembers, per page of
 * each queue partition, the page's LSN when it last read it and what it
 * found there:
 *
 *	  settled			every tuple on the page is dead for good (deleted by a
 *						committed transaction, or inserted by an aborted one)
 *						or a live event of another worker's twins;
 *	  pending from id	as settled, except for live events of this worker
 *						visible to that fetch, the smallest of them 'id';
 *	  unknown			anything else: an insert or a delete in progress, or
 *						an event committed after the fetch's snapshot.
 *
 * A page whose LSN has not moved is the same page: every change of a page
 * of a permanent relation that can add, remove or change a tuple writes WAL
 * and advances the page's LSN (hint bits do not, and they only cache what
 * the commit log says).  The one change that needs no page write, a
 * transaction committing or aborting, can only affect tuples whose inserter
 * or deleter was in progress, and a page with such a tuple is "unknown",
 * read again next time.  So a settled page is skipped, and a pending page
 * is skipped when the batch is full with ids below its smallest one.  A
 * page whose LSN moved is read again.  The memo belongs to one relfilenode
 * and one division of twins among workers; a TRUNCATE (rotation) or a new
 * number of workers starts it afresh.  A relation that writes no WAL (an
 * unlogged queue, which the extension never creates) is read whole each
 * time.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/detoast.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/tableam.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "lib/binaryheap.h"
#include "miscadmin.h"
#include "storage/bufmgr.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "dt_internal.h"

/* Attribute numbers of the events table (same in every partition). */
#define DT_EVENT_ATT_ID				1
#define DT_EVENT_ATT_MODEL			2
#define DT_EVENT_ATT_TWIN_ID		3
#define DT_EVENT_ATT_PAYLOAD		4
#define DT_EVENT_ATT_ENQUEUED_AT	5
#define DT_EVENT_ATT_PART			6
#define DT_EVENT_ATT_DEPTH			7	/* version 1.4 */
#define DT_EVENT_ATT_EVENT_TIME		8	/* version 1.5 */
#define DT_EVENT_ATT_SENDER_MODEL	9
#define DT_EVENT_ATT_SENDER_TWIN	10
#define DT_EVENT_ATT_RETRY_OF		11	/* version 1.7 */

/* what a page held when last read (see the header) */
#define DT_PAGE_UNKNOWN		((XLogRecPtr) PG_UINT64_MAX)	/* never a page's LSN */
#define DT_NOTHING_PENDING	PG_INT64_MAX

typedef struct DtPageMemo
{
	XLogRecPtr	lsn;			/* DT_PAGE_UNKNOWN: read it */
	int64		min_pending;	/* smallest id of ours on it, or
								 * DT_NOTHING_PENDING */
	Buffer		buffer;			/* where it was (checked before use) */
} DtPageMemo;

/* one per queue partition, in TopMemoryContext */
typedef struct DtQueueMemo
{
	Oid			relfilenode;
	int			partition;		/* the division of twins it was made for */
	int			partitions;
	BlockNumber npages;			/* allocated */
	DtPageMemo *pages;
} DtQueueMemo;

static DtQueueMemo memos[DT_QUEUE_PARTITIONS];

/* an event found by a fetch, a copy of its tuple */
typedef struct DtFetchCandidate
{
	int64		id;
	int			source;			/* index of its queue partition */
	HeapTuple	tuple;
} DtFetchCandidate;

/* a fetch in progress: the limit smallest ids seen so far */
typedef struct DtFetchState
{
	int			limit;
	int			partition;
	int			partitions;
	Snapshot	snapshot;
	binaryheap *heap;			/* of DtFetchCandidate *, largest id first */
	MemoryContext cxt;			/* the candidates' copies */
} DtFetchState;

/*
 * The attribute numbers above hold for every partition; make sure, and
 * return how many of them exist.  The partitions were created with their
 * parent and never had a column dropped, and a column added to the parent
 * (depth in version 1.4, event_time and the sender in 1.5, retry_of in 1.7)
 * is added to each partition in the same position.  Until the extension is updated, the
 * newer columns do not exist: every event then counts as sent by an
 * application (depth 0, no sender) at its enqueue time.
 */
static int
dt_fetch_check_columns(Relation rel)
{
	static const char *const names[] = {"id", "model", "twin_id", "payload",
		"enqueued_at", "part", "depth", "event_time", "sender_model", "sender_twin",
	"retry_of"};
	TupleDesc	desc = RelationGetDescr(rel);
	int			i;

	StaticAssertStmt(lengthof(names) == DT_EVENT_ATT_RETRY_OF,
					 "one name per attribute number");
	for (i = 0; i < lengthof(names); i++)
	{
		/* the columns of an older version of the extension only */
		if (desc->natts == i &&
			(i + 1 == DT_EVENT_ATT_DEPTH || i + 1 == DT_EVENT_ATT_EVENT_TIME ||
			 i + 1 == DT_EVENT_ATT_RETRY_OF))
			return i;
		if (desc->natts <= i ||
			TupleDescAttr(desc, i)->attisdropped ||
			strcmp(NameStr(TupleDescAttr(desc, i)->attname), names[i]) != 0)
			elog(ERROR, "digitaltwin: unexpected column %d in queue partition \"%s\"",
				 i + 1, RelationGetRelationName(rel));
	}
	Assert(TupleDescAttr(desc, DT_EVENT_ATT_DEPTH - 1)->atttypid == INT4OID);
	Assert(TupleDescAttr(desc, DT_EVENT_ATT_EVENT_TIME - 1)->atttypid == TIMESTAMPTZOID);
	return lengthof(names);
}

/* binaryheap comparator: the largest id on top */
static int
dt_candidate_cmp(Datum a, Datum b, void *arg)
{
	int64		ia = ((DtFetchCandidate *) DatumGetPointer(a))->id;
	int64		ib = ((DtFetchCandidate *) DatumGetPointer(b))->id;

	return (ia > ib) - (ia < ib);
}

/* the largest id the fetch keeps, once it has 'limit' of them */
static int64
dt_fetch_bar(DtFetchState *fs)
{
	if (binaryheap_empty(fs->heap) || fs->heap->bh_size < fs->limit)
		return PG_INT64_MAX;
	return ((DtFetchCandidate *) DatumGetPointer(binaryheap_first(fs->heap)))->id;
}

/* Offer an event to the fetch: kept if among the limit smallest so far. */
static void
dt_fetch_offer(DtFetchState *fs, int source, int64 id, HeapTuple tuple)
{
	DtFetchCandidate *c;
	MemoryContext old;

	if (fs->heap->bh_size >= fs->limit)
	{
		if (id >= dt_fetch_bar(fs))
			return;
		c = (DtFetchCandidate *) DatumGetPointer(binaryheap_first(fs->heap));
		heap_freetuple(c->tuple);
	}
	else
		c = MemoryContextAlloc(fs->cxt, sizeof(DtFetchCandidate));
	old = MemoryContextSwitchTo(fs->cxt);
	c->tuple = heap_copytuple(tuple);
	MemoryContextSwitchTo(old);
	c->id = id;
	c->source = source;
	if (fs->heap->bh_size >= fs->limit)
		binaryheap_replace_first(fs->heap, PointerGetDatum(c));
	else
		binaryheap_add(fs->heap, PointerGetDatum(c));
}

/*
 * Start the memo of a queue partition afresh if it was made for another
 * file or division of twins, and make room for npages.
 */
static DtQueueMemo *
dt_memo_for(int source, Relation rel, int partition, int partitions,
			BlockNumber npages)
{
	DtQueueMemo *memo = &memos[source];
	BlockNumber i;

	if (memo->relfilenode != rel->rd_node.relNode ||
		memo->partition != partition || memo->partitions != partitions)
	{
		memo->relfilenode = rel->rd_node.relNode;
		memo->partition = partition;
		memo->partitions = partitions;
		for (i = 0; i < memo->npages; i++)
		{
			memo->pages[i].lsn = DT_PAGE_UNKNOWN;
			memo->pages[i].buffer = InvalidBuffer;
		}
	}
	if (npages > memo->npages)
	{
		BlockNumber size = Max(npages, Max(memo->npages * 2, 64));

		if (memo->pages == NULL)
			memo->pages = MemoryContextAllocHuge(TopMemoryContext, sizeof(DtPageMemo) * size);
		else
			memo->pages = repalloc_huge(memo->pages, sizeof(DtPageMemo) * size);
		for (i = memo->npages; i < size; i++)
		{
			memo->pages[i].lsn = DT_PAGE_UNKNOWN;
			memo->pages[i].buffer = InvalidBuffer;
		}
		memo->npages = size;
	}
	return memo;
}

/* Is this live event one of this worker's twins? */
static bool
dt_event_is_ours(HeapTuple tuple, TupleDesc desc, int partition, int partitions)
{
	bool		isnull;
	text	   *twin_id;

	if (partitions <= 1)
		return true;
	twin_id = DatumGetTextPP(heap_getattr(tuple, DT_EVENT_ATT_TWIN_ID, desc, &isnull));
	/* the CHECK refuses a NULL twin id; one would be nobody's */
	return !isnull &&
		dt_partition_of(VARDATA_ANY(twin_id), VARSIZE_ANY_EXHDR(twin_id),
						partitions) == partition;
}

/*
 * Read one page (share-locked by the caller): offer this worker's visible
 * events to the fetch and fill in the page's memo.
 */
static void
dt_fetch_read_page(DtFetchState *fs, int source, Relation rel, Buffer buffer,
				   DtPageMemo *memo)
{
	Page		page = BufferGetPage(buffer);
	TupleDesc	desc = RelationGetDescr(rel);
	OffsetNumber maxoff = PageGetMaxOffsetNumber(page);
	OffsetNumber off;
	bool		known = !PageIsNew(page);
	int64		min_pending = DT_NOTHING_PENDING;
	TransactionId running = InvalidTransactionId;

	for (off = FirstOffsetNumber; off <= maxoff; off = OffsetNumberNext(off))
	{
		HeapTupleData tuple;
		bool		isnull;
		int64		id;

		if (!dt_page_tuple(rel, buffer, off, &tuple))
			continue;

		/*
		 * The rows of a large COPY in progress: one transaction's, page after
		 * page.  Once one of them was found in progress (after our snapshot
		 * was taken), the next rows of that transaction are invisible to us
		 * too, and leave the page unknown: no need to ask the proc array for
		 * each.
		 */
		if (TransactionIdIsValid(running) &&
			HeapTupleHeaderGetRawXmin(tuple.t_data) == running &&
			!HeapTupleHeaderXminCommitted(tuple.t_data))
			continue;

		switch (HeapTupleSatisfiesVacuum(&tuple, InvalidTransactionId, buffer))
		{
			case HEAPTUPLE_DEAD:
				/* never committed: gone for every fetch */
				continue;
			case HEAPTUPLE_RECENTLY_DEAD:
				/* consumed: gone for every later fetch */
				if (!dt_event_is_ours(&tuple, desc, fs->partition, fs->partitions) ||
					!HeapTupleSatisfiesVisibility(&tuple, fs->snapshot, buffer))
					continue;

				/*
				 * ... but deleted (or updated, by the queue's owner) after our
				 * snapshot was taken: offered as the snapshot sees it, its
				 * delete in the batch fails and the batch is retried, as
				 * before 1.12; skipping it would let the fetch claim to have
				 * seen every event of ours while a new version of it waits.
				 */
				known = false;
				id = DatumGetInt64(heap_getattr(&tuple, DT_EVENT_ATT_ID, desc, &isnull));
				dt_fetch_offer(fs, source, id, &tuple);
				continue;
			case HEAPTUPLE_LIVE:
				if (!dt_event_is_ours(&tuple, desc, fs->partition, fs->partitions))
					continue;
				if (!HeapTupleSatisfiesVisibility(&tuple, fs->snapshot, buffer))
				{
					/* committed after our snapshot: the next fetch sees it */
					known = false;
					continue;
				}
				id = DatumGetInt64(heap_getattr(&tuple, DT_EVENT_ATT_ID, desc, &isnull));
				min_pending = Min(min_pending, id);
				dt_fetch_offer(fs, source, id, &tuple);
				continue;
			case HEAPTUPLE_INSERT_IN_PROGRESS:
				/* may go either way: read the page again next time */
				known = false;
				if (!TransactionIdIsCurrentTransactionId(HeapTupleHeaderGetRawXmin(tuple.t_data)))
				{
					running = HeapTupleHeaderGetRawXmin(tuple.t_data);
					continue;
				}
				/* FALLTHROUGH */
			case HEAPTUPLE_DELETE_IN_PROGRESS:
				known = false;

				/*
				 * A delete in progress is not ours (a worker fetches before
				 * it deletes); the snapshot says whether we see it.
				 */
				if (dt_event_is_ours(&tuple, desc, fs->partition, fs->partitions) &&
					HeapTupleSatisfiesVisibility(&tuple, fs->snapshot, buffer))
				{
					id = DatumGetInt64(heap_getattr(&tuple, DT_EVENT_ATT_ID, desc, &isnull));
					dt_fetch_offer(fs, source, id, &tuple);
				}
				continue;
		}
	}
	memo->lsn = known ? BufferGetLSNAtomic(buffer) : DT_PAGE_UNKNOWN;
	/* a page never WAL-logged since its file was created: read it again */
	if (memo->lsn == InvalidXLogRecPtr)
		memo->lsn = DT_PAGE_UNKNOWN;
	memo->min_pending = min_pending;
}

/*
 * Pin a page of the queue.  Most pages are only looked at (their LSN has
 * not moved), and looking a page up in the buffer mapping table cost more
 * than the rest of a fetch together: try the buffer it was in last time,
 * which ReadRecentBuffer() checks still holds it.
 */
static Buffer
dt_fetch_pin_page(Relation rel, BlockNumber blkno, DtPageMemo *pm,
				  BufferAccessStrategy strategy)
{
	if (BufferIsValid(pm->buffer) &&
		ReadRecentBuffer(rel->rd_node, MAIN_FORKNUM, blkno, pm->buffer))
		return pm->buffer;
	pm->buffer = ReadBufferExtended(rel, MAIN_FORKNUM, blkno, RBM_NORMAL, strategy);
	return pm->buffer;
}

/*
 * A backlog larger than a quarter of shared_buffers is read through a ring
 * of buffers, as a sequential scan would be, so that reading it for every
 * batch does not push the twins' pages out of shared memory.
 */
static BufferAccessStrategy
dt_fetch_strategy(BlockNumber npages)
{
	static BufferAccessStrategy bulk = NULL;

	if (npages <= (BlockNumber) (NBuffers / 4))
		return NULL;
	if (bulk == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		bulk = GetAccessStrategy(BAS_BULKREAD);
		MemoryContextSwitchTo(old);
	}
	return bulk;
}

/* Read the pages of one queue partition that may hold events for us. */
static void
dt_fetch_scan_partition(DtFetchState *fs, int source, Relation rel)
{
	BlockNumber npages = RelationGetNumberOfBlocks(rel);
	bool		use_memo = RelationNeedsWAL(rel);
	DtQueueMemo *memo = dt_memo_for(source, rel, fs->partition, fs->partitions, npages);
	BufferAccessStrategy strategy = dt_fetch_strategy(npages);
	BlockNumber blkno;

	for (blkno = 0; blkno < npages; blkno++)
	{
		DtPageMemo *pm = &memo->pages[blkno];
		Buffer		buffer;

		CHECK_FOR_INTERRUPTS();
		buffer = dt_fetch_pin_page(rel, blkno, pm, strategy);
		LockBuffer(buffer, BUFFER_LOCK_SHARE);
		if (!use_memo || pm->lsn != BufferGetLSNAtomic(buffer) ||
			pm->min_pending < dt_fetch_bar(fs))
			dt_fetch_read_page(fs, source, rel, buffer, pm);
		UnlockReleaseBuffer(buffer);
	}
}

/* Turn a fetched tuple into an event, in the caller's memory context. */
static void
dt_fetch_take(DtFetchCandidate *c, Relation rel, int natts, DtEvent *ev)
{
	TupleDesc	desc = RelationGetDescr(rel);
	HeapTuple	tuple = c->tuple;
	bool		isnull;
	Datum		d;

	memset(ev, 0, sizeof(DtEvent));
	ev->relid = RelationGetRelid(rel);
	ev->tid = tuple->t_self;
	ev->id = c->id;
	d = heap_getattr(tuple, DT_EVENT_ATT_MODEL, desc, &isnull);
	ev->model = isnull ? pstrdup("") : TextDatumGetCString(d);
	d = heap_getattr(tuple, DT_EVENT_ATT_TWIN_ID, desc, &isnull);
	ev->twin_id = isnull ? pstrdup("") : TextDatumGetCString(d);
	/* detoast now: dead letters and models need the whole payload */
	d = heap_getattr(tuple, DT_EVENT_ATT_PAYLOAD, desc, &isnull);
	ev->payload = isnull ? NULL : DatumGetJsonbPCopy(d);
	ev->enqueued_at = DatumGetTimestampTz(heap_getattr(tuple, DT_EVENT_ATT_ENQUEUED_AT,
													   desc, &isnull));
	ev->depth = 0;
	if (natts >= DT_EVENT_ATT_DEPTH)
	{
		d = heap_getattr(tuple, DT_EVENT_ATT_DEPTH, desc, &isnull);
		if (!isnull)
			ev->depth = DatumGetInt32(d);
	}
	ev->event_time = ev->enqueued_at;
	if (natts >= DT_EVENT_ATT_SENDER_TWIN)
	{
		d = heap_getattr(tuple, DT_EVENT_ATT_EVENT_TIME, desc, &isnull);
		if (!isnull)
			ev->event_time = DatumGetTimestampTz(d);
		d = heap_getattr(tuple, DT_EVENT_ATT_SENDER_MODEL, desc, &isnull);
		ev->sender_model = isnull ? NULL : TextDatumGetCString(d);
		d = heap_getattr(tuple, DT_EVENT_ATT_SENDER_TWIN, desc, &isnull);
		ev->sender_twin = isnull ? NULL : TextDatumGetCString(d);
	}
	if (natts >= DT_EVENT_ATT_RETRY_OF)
	{
		d = heap_getattr(tuple, DT_EVENT_ATT_RETRY_OF, desc, &isnull);
		if (!isnull)
			ev->retry_of = DatumGetInt64(d);
	}
}

/*
 * The fetched events live in one array kept for the life of the worker and
 * grown as batches grow: a fresh array for each batch (4 MB for 50000
 * events) cost more in page faults, zeroing and copying as it doubled than
 * reading the events did.  Their strings and payloads are in the caller's
 * batch context.
 */
static DtEvent *fetch_buffer = NULL;
static int	fetch_buffer_size = 0;

static void
dt_fetch_grow_buffer(int size)
{
	if (size <= fetch_buffer_size)
		return;
	if (fetch_buffer == NULL)
		fetch_buffer = MemoryContextAllocHuge(TopMemoryContext, sizeof(DtEvent) * size);
	else
		fetch_buffer = repalloc_huge(fetch_buffer, sizeof(DtEvent) * size);
	fetch_buffer_size = size;
}

/*
 * The fetch's max-heap, kept for the life of the worker (an idle poll
 * would otherwise allocate one of batch_size entries for nothing).
 */
static binaryheap *
dt_fetch_heap(int limit)
{
	static binaryheap *heap = NULL;

	if (heap != NULL && heap->bh_space < limit)
	{
		binaryheap_free(heap);
		heap = NULL;
	}
	if (heap == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		heap = binaryheap_allocate(limit, dt_candidate_cmp, NULL);
		MemoryContextSwitchTo(old);
	}
	binaryheap_reset(heap);
	return heap;
}

static int
dt_candidate_qsort_cmp(const void *a, const void *b)
{
	int64		ia = (*(DtFetchCandidate *const *) a)->id;
	int64		ib = (*(DtFetchCandidate *const *) b)->id;

	return (ia > ib) - (ia < ib);
}

/*
 * Read up to 'limit' of the oldest visible events of a partition of twins
 * into *events, in id order, valid until the next fetch.
 *
 * The fetch reads with the active snapshot, which the worker takes after
 * dt_worker_start_batch() counted the batch (see wait_idle), as a READ
 * COMMITTED statement would, and which its models then run with.  It reads the
 * three queue partitions straight through the buffer manager (see the
 * header), without planning or starting an executor for every batch (a
 * batch of a few events spent more on that than on the events).
 */
int
dt_fetch_events(int partition, int partitions, int limit, DtEvent **events)
{
	Relation	parent;
	Relation	rels[DT_QUEUE_PARTITIONS];
	int			natts[DT_QUEUE_PARTITIONS];
	DtFetchState fs;
	DtFetchCandidate **found;
	int			n;
	int			i;

	Assert(limit > 0);
	fs.limit = limit;
	fs.partition = partition;
	fs.partitions = partitions;
	fs.cxt = AllocSetContextCreate(CurrentMemoryContext, "digitaltwin fetch",
								   ALLOCSET_DEFAULT_SIZES);
	fs.heap = dt_fetch_heap(limit);

	parent = table_open(dt_extension_relid("events"), AccessShareLock);
	fs.snapshot = GetActiveSnapshot();
	for (i = 0; i < DT_QUEUE_PARTITIONS; i++)
	{
		rels[i] = table_open(dt_queue_partition_relid(i), AccessShareLock);
		natts[i] = dt_fetch_check_columns(rels[i]);
		dt_fetch_scan_partition(&fs, i, rels[i]);
	}

	n = fs.heap->bh_size;
	found = palloc(sizeof(DtFetchCandidate *) * Max(n, 1));
	for (i = 0; i < n; i++)
		found[i] = (DtFetchCandidate *) DatumGetPointer(fs.heap->bh_nodes[i]);
	qsort(found, n, sizeof(DtFetchCandidate *), dt_candidate_qsort_cmp);
	dt_fetch_grow_buffer(Max(n, Min(limit, 1024)));
	for (i = 0; i < n; i++)
		dt_fetch_take(found[i], rels[found[i]->source], natts[found[i]->source],
					  &fetch_buffer[i]);

	for (i = 0; i < DT_QUEUE_PARTITIONS; i++)
		table_close(rels[i], NoLock);
	table_close(parent, NoLock);
	pfree(found);
	MemoryContextDelete(fs.cxt);
	*events = fetch_buffer;
	return n;
}

/*
 * Delete consumed events by ctid, in the batch's transaction, straight
 * through the table AM: a DELETE statement would be planned from the
 * partitions' statistics, which are never current (autovacuum is off on
 * them and they are truncated in bulk), and a sequential scan filtering on
 * an array of ctids costs rows x events.  Nobody else deletes events, so a
 * concurrent change is an error (the batch is retried).
 */
void
dt_delete_events(DtEvent *events, int nevents)
{
	Relation	rel = NULL;
	Snapshot	snapshot = GetActiveSnapshot();
	int			i;

	for (i = 0; i < nevents; i++)
	{
		Assert(OidIsValid(events[i].relid));
		if (rel == NULL || RelationGetRelid(rel) != events[i].relid)
		{
			if (rel != NULL)
				table_close(rel, NoLock);
			rel = table_open(events[i].relid, RowExclusiveLock);
		}
		simple_table_tuple_delete(rel, &events[i].tid, snapshot);
	}
	if (rel != NULL)
		table_close(rel, NoLock);
	CommandCounterIncrement();
}
