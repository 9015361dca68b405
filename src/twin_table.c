/*-------------------------------------------------------------------------
 *
 * twin_table.c
 *	  The shared table of twins: open addressing in stripes, in DSA.
 *
 * A twin is one DSA chunk (DtTwinEntry): a 27-byte header, the twin id and
 * the state image, one after the other.  The table holds only pointers to
 * them.  It is split into DT_TABLE_STRIPES stripes by the low bits of the
 * twin's hash, each with its own LWLock and its own array of slots (a
 * dsa_pointer each, linear probing, at most three quarters used), so that
 * a reader scanning the table locks one stripe at a time and a worker
 * writing a twin waits at most for the copy of one stripe.
 *
 * Why not dshash: per twin it costs an item header, a bucket pointer, a
 * chunk for the id (its key type is fixed in size) and a chunk for the
 * state, 96 bytes beyond the state; its scan follows a chain per bucket,
 * one cache miss per entry with nothing to overlap them.  Here a twin
 * costs its header, its id and its share of the slots (56 bytes for a
 * 13-byte id), a scan walks a plain array and asks for the entries a few
 * slots ahead before it reads them, and a twin read whole (id, counters
 * and state) is one chunk.
 *
 * Locking rules (shmem.c states the store's rules on top of these):
 *	- A slot array is read under its stripe's lock, shared or exclusive;
 *	  it is written, and an entry linked or unlinked, only exclusive.
 *	- An entry linked into the table is never written except under its
 *	  stripe's exclusive lock; readers copy what they need under the shared
 *	  lock.  An entry not linked yet (being prepared) is private to its
 *	  writer.
 *	- One stripe lock at a time.  Inside it, only the DSA area's own lock
 *	  (dsa_allocate, dsa_free, dsa_get_address mapping a segment).
 *
 * Capacity: a twin's entry is linked after its batch commits, where
 * nothing may fail, so a batch reserves a slot for it before commit
 * (dt_table_reserve), whether the twin exists or not (an entry that
 * replaces the twin's old one leaves the promise unused), and no link
 * after commit needs memory, whatever happened to the twin in between.  In
 * every stripe, live slots + tombstones + reservations stay at most three
 * quarters of the slots; the array grows (or is rebuilt without its
 * tombstones) only when a promise or a load needs room.  A deleted slot
 * becomes a tombstone, or empty if the slot after it is empty (and so do
 * the tombstones just before it).
 *
 * Copyright (c) 2026, digitaltwin developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/hashfn.h"

#include "dt_internal.h"

/* a slot whose entry was deleted: probing goes on past it */
#define DT_SLOT_TOMBSTONE	((dsa_pointer) 1)
#define DT_SLOT_IS_ENTRY(s)	((s) > DT_SLOT_TOMBSTONE)

#define DT_TABLE_MIN_SLOTS	16

/* entries a scan asks the processor for ahead of the one it returns */
#define DT_SCAN_PREFETCH	8

/*
 * The key of a twin in the table: model, id and their hash.  The hash is
 * not kept in the entry (5 bytes of every twin): it is computed again when
 * the slots are rebuilt, and a probe compares the model and the id, which
 * are in the entry's first cache line anyway.
 */
void
dt_table_key(DtTableKey *key, int32 model_id, const char *twin_id, int idlen)
{
	key->model_id = model_id;
	key->id = twin_id;
	key->idlen = idlen;
	key->hash = hash_combine(murmurhash32((uint32) model_id),
							 hash_bytes((const unsigned char *) twin_id, idlen));
}

static void
dt_entry_key(DtTableKey *key, const DtTwinEntry *entry)
{
	dt_table_key(key, entry->model_id, entry->data, entry->id_len);
}

static inline DtTableStripe *
dt_table_stripe(DtTwinTable *table, uint32 hash)
{
	return &table->stripes[hash & (DT_TABLE_STRIPES - 1)].stripe;
}

static inline uint32
dt_table_home(const DtTableStripe *stripe, uint32 hash)
{
	return (hash / DT_TABLE_STRIPES) & (stripe->nslots - 1);
}

static inline dsa_pointer *
dt_table_slots(dsa_area *area, const DtTableStripe *stripe)
{
	return (dsa_pointer *) dsa_get_address(area, stripe->slots);
}

static inline bool
dt_entry_matches(const DtTwinEntry *entry, const DtTableKey *key)
{
	return entry->model_id == key->model_id && entry->id_len == key->idlen &&
		memcmp(entry->data, key->id, key->idlen) == 0;
}

/* what a stripe holds or has promised, and may hold at most */
static inline bool
dt_table_has_room(const DtTableStripe *stripe, uint32 more)
{
	return (uint64) stripe->used + stripe->tombstones + stripe->reserved + more <=
		(uint64) stripe->nslots / 4 * 3;
}

void
dt_table_init(DtTwinTable *table, int tranche_id)
{
	int			i;

	for (i = 0; i < DT_TABLE_STRIPES; i++)
	{
		DtTableStripe *stripe = &table->stripes[i].stripe;

		LWLockInitialize(&stripe->lock, tranche_id);
		stripe->nslots = 0;
		stripe->used = 0;
		stripe->tombstones = 0;
		stripe->reserved = 0;
		stripe->slots = InvalidDsaPointer;
	}
}

/*
 * The slot of the twin (model_id, twin_id), or of where it would go: the
 * first tombstone met, else the empty slot that ended the probe.  Returns
 * true if found.  The caller holds the stripe's lock and nslots > 0.
 */
static bool
dt_table_probe(dsa_area *area, DtTableStripe *stripe, const DtTableKey *key,
			   uint32 *pos)
{
	dsa_pointer *slots = dt_table_slots(area, stripe);
	uint32		mask = stripe->nslots - 1;
	uint32		i = dt_table_home(stripe, key->hash);
	bool		have_free = false;

	for (;;)
	{
		dsa_pointer s = slots[i];

		if (s == InvalidDsaPointer)
		{
			if (!have_free)
				*pos = i;
			return false;
		}
		if (s == DT_SLOT_TOMBSTONE)
		{
			if (!have_free)
			{
				*pos = i;
				have_free = true;
			}
		}
		else if (dt_entry_matches(dsa_get_address(area, s), key))
		{
			*pos = i;
			return true;
		}
		i = (i + 1) & mask;
	}
}

/*
 * Rebuild a stripe's slots with room for 'more' entries beyond the live
 * ones and the reservations, dropping the tombstones: the size is the
 * smallest power of two that leaves the stripe at most three eighths used,
 * so that a stripe grows by doubling.  Caller holds the lock exclusively.
 * Returns false, changing nothing, when the memory cannot be had.
 */
static bool
dt_table_rebuild(dsa_area *area, DtTableStripe *stripe, uint32 more)
{
	uint64		need = (uint64) stripe->used + stripe->reserved + more;
	uint32		nslots = DT_TABLE_MIN_SLOTS;
	dsa_pointer new_slots;
	dsa_pointer *to;
	uint32		mask;
	uint32		i;

	while ((uint64) nslots / 8 * 3 < need)
	{
		if (nslots >= (uint32) 1 << 30)
			return false;
		nslots *= 2;
	}
	new_slots = dsa_allocate_extended(area, (Size) nslots * sizeof(dsa_pointer),
									  DSA_ALLOC_NO_OOM | DSA_ALLOC_ZERO |
									  DSA_ALLOC_HUGE);
	if (!DsaPointerIsValid(new_slots))
		return false;
	to = (dsa_pointer *) dsa_get_address(area, new_slots);
	mask = nslots - 1;
	if (stripe->nslots > 0)
	{
		dsa_pointer *from = dt_table_slots(area, stripe);

		for (i = 0; i < stripe->nslots; i++)
		{
			DtTableKey	key;
			uint32		j;

			if (!DT_SLOT_IS_ENTRY(from[i]))
				continue;
			dt_entry_key(&key, dsa_get_address(area, from[i]));
			j = (key.hash / DT_TABLE_STRIPES) & mask;
			while (to[j] != InvalidDsaPointer)
				j = (j + 1) & mask;
			to[j] = from[i];
		}
		dsa_free(area, stripe->slots);
	}
	stripe->slots = new_slots;
	stripe->nslots = nslots;
	stripe->tombstones = 0;
	return true;
}

/* Make room for one more entry, or fail with the stripe unchanged. */
static bool
dt_table_make_room(dsa_area *area, DtTableStripe *stripe)
{
	if (stripe->nslots > 0 && dt_table_has_room(stripe, 1))
		return true;
	return dt_table_rebuild(area, stripe, 1);
}

/*
 * A twin's entry, not linked yet: header, id and state image in one chunk;
 * the caller fills the rest of the header.  InvalidDsaPointer when the
 * memory cannot be had.
 */
dsa_pointer
dt_table_entry_alloc(dsa_area *area, const DtTableKey *key, const char *image,
					 Size len)
{
	dsa_pointer dp;
	DtTwinEntry *entry;

	Assert(key->idlen <= DT_TWIN_ID_MAXLEN);
	dp = dsa_allocate_extended(area, offsetof(DtTwinEntry, data) + key->idlen + len,
							   DSA_ALLOC_NO_OOM | DSA_ALLOC_HUGE);
	if (!DsaPointerIsValid(dp))
		return dp;
	entry = dsa_get_address(area, dp);
	memset(entry, 0, offsetof(DtTwinEntry, data));
	entry->model_id = key->model_id;
	entry->id_len = (uint8) key->idlen;
	entry->state_len = (uint32) len;
	memcpy(entry->data, key->id, key->idlen);
	memcpy(entry->data + key->idlen, image, len);
	return dp;
}

/*
 * The entry of a twin, its stripe locked in 'mode' until dt_table_release();
 * NULL (nothing locked) if there is none.
 */
DtTwinEntry *
dt_table_find(dsa_area *area, DtTwinTable *table, const DtTableKey *key,
			  LWLockMode mode)
{
	DtTableStripe *stripe = dt_table_stripe(table, key->hash);
	uint32		pos;

	LWLockAcquire(&stripe->lock, mode);
	if (stripe->nslots > 0 && dt_table_probe(area, stripe, key, &pos))
		return dsa_get_address(area, dt_table_slots(area, stripe)[pos]);
	LWLockRelease(&stripe->lock);
	return NULL;
}

void
dt_table_release(DtTwinTable *table, const DtTwinEntry *entry)
{
	DtTableKey	key;

	dt_entry_key(&key, entry);
	LWLockRelease(&dt_table_stripe(table, key.hash)->lock);
}

/*
 * Before commit: promise a slot to a twin's next entry, so that linking it
 * after commit needs no memory.  Give it back with dt_table_unreserve() or
 * use it with dt_table_link().  Returns false, nothing promised,
 * when the slots cannot grow.
 */
bool
dt_table_reserve(dsa_area *area, DtTwinTable *table, const DtTableKey *key)
{
	DtTableStripe *stripe = dt_table_stripe(table, key->hash);
	bool		reserved;

	LWLockAcquire(&stripe->lock, LW_EXCLUSIVE);
	reserved = dt_table_make_room(area, stripe);
	if (reserved)
		stripe->reserved++;
	LWLockRelease(&stripe->lock);
	return reserved;
}

/*
 * A promise used or given back: it must have been made.  (An unreserve
 * without a promise is only reported: nothing depends on it.)
 */
static void
dt_table_keep_promise(DtTableStripe *stripe, int elevel)
{
	if (stripe->reserved == 0 || stripe->nslots == 0)
	{
		elog(elevel, "digitaltwin: a slot of the twins' table was used or given back without being promised");
		return;
	}
	stripe->reserved--;
}

void
dt_table_unreserve(DtTwinTable *table, const DtTableKey *key)
{
	DtTableStripe *stripe = dt_table_stripe(table, key->hash);

	LWLockAcquire(&stripe->lock, LW_EXCLUSIVE);
	dt_table_keep_promise(stripe, WARNING);
	LWLockRelease(&stripe->lock);
}

/*
 * Put a chunk in the slot a probe returned: in place of the entry found
 * there (returned, its header copied into *old), or in a free slot.  The
 * caller holds the stripe exclusively and has made sure of the room.
 */
static dsa_pointer
dt_table_place(dsa_area *area, DtTableStripe *stripe, uint32 pos, bool found,
			   dsa_pointer chunk, DtTwinEntry *old)
{
	dsa_pointer *slots = dt_table_slots(area, stripe);
	dsa_pointer replaced = InvalidDsaPointer;

	if (found)
	{
		replaced = slots[pos];
		memcpy(old, dsa_get_address(area, replaced), offsetof(DtTwinEntry, data));
	}
	else
	{
		if (slots[pos] == DT_SLOT_TOMBSTONE)
			stripe->tombstones--;
		stripe->used++;
	}
	slots[pos] = chunk;
	return replaced;
}

/*
 * Link a prepared entry (a chunk whose header and id are filled) into the
 * table, in place of the twin's entry if it has one, using the slot
 * promised to it (dt_table_reserve): nothing can fail.  Returns the chunk
 * it replaced, to be freed by the caller (InvalidDsaPointer if the twin is
 * new), and copies that entry's header into *old.
 */
dsa_pointer
dt_table_link(dsa_area *area, DtTwinTable *table, dsa_pointer chunk,
			  DtTwinEntry *old)
{
	DtTableKey	key;
	DtTableStripe *stripe;
	dsa_pointer replaced;
	uint32		pos;
	bool		found;

	dt_entry_key(&key, dsa_get_address(area, chunk));
	stripe = dt_table_stripe(table, key.hash);
	LWLockAcquire(&stripe->lock, LW_EXCLUSIVE);
	/* without the promise, the probe could find no empty slot to stop at */
	dt_table_keep_promise(stripe, PANIC);
	found = dt_table_probe(area, stripe, &key, &pos);
	/* (found: the old entry's slot is the new one's, the promise unused) */
	replaced = dt_table_place(area, stripe, pos, found, chunk, old);
	LWLockRelease(&stripe->lock);
	return replaced;
}

/*
 * Load a twin (a worker's start): make its entry from 'header' (the fields
 * after the id are ignored), the key and the image, and link it, in place
 * of the twin's entry if it has one, all under one lock.  The chunk is
 * allocated last, once the slot is found (the probe reads other entries,
 * which may map a segment: an error), so that an error leaves no chunk
 * behind.  Returns false when the memory cannot be had (the stripe may
 * have been rebuilt, nothing else changed); else the chunk linked in
 * *chunk and the one replaced in *replaced (to be freed by the caller,
 * with its header in *old) or InvalidDsaPointer.
 */
bool
dt_table_load(dsa_area *area, DtTwinTable *table, const DtTableKey *key,
			  const DtTwinEntry *header, const char *image, Size len,
			  dsa_pointer *chunk, dsa_pointer *replaced, DtTwinEntry *old)
{
	DtTableStripe *stripe = dt_table_stripe(table, key->hash);
	DtTwinEntry *entry;
	uint32		pos;
	bool		found;

	*replaced = InvalidDsaPointer;
	LWLockAcquire(&stripe->lock, LW_EXCLUSIVE);
	if (!dt_table_make_room(area, stripe))
	{
		LWLockRelease(&stripe->lock);
		return false;
	}
	found = dt_table_probe(area, stripe, key, &pos);
	*chunk = dt_table_entry_alloc(area, key, image, len);
	if (!DsaPointerIsValid(*chunk))
	{
		LWLockRelease(&stripe->lock);
		return false;
	}
	entry = dsa_get_address(area, *chunk);
	entry->state_version = header->state_version;
	entry->event_count = header->event_count;
	entry->updated_at = header->updated_at;
	*replaced = dt_table_place(area, stripe, pos, found, *chunk, old);
	LWLockRelease(&stripe->lock);
	return true;
}

/* Empty a slot (caller holds the stripe exclusively). */
static void
dt_table_clear_slot(dsa_area *area, DtTableStripe *stripe, uint32 pos)
{
	dsa_pointer *slots = dt_table_slots(area, stripe);
	uint32		mask = stripe->nslots - 1;

	stripe->used--;
	if (slots[(pos + 1) & mask] != InvalidDsaPointer)
	{
		slots[pos] = DT_SLOT_TOMBSTONE;
		stripe->tombstones++;
		return;
	}
	/* no probe goes past an empty slot: neither past the tombstones before */
	slots[pos] = InvalidDsaPointer;
	for (pos = (pos - 1) & mask; slots[pos] == DT_SLOT_TOMBSTONE;
		 pos = (pos - 1) & mask)
	{
		slots[pos] = InvalidDsaPointer;
		stripe->tombstones--;
	}
}

/*
 * Unlink a twin's entry.  Returns its chunk, to be freed by the caller
 * (InvalidDsaPointer if there was none), and copies its header into *old.
 */
dsa_pointer
dt_table_unlink(dsa_area *area, DtTwinTable *table, const DtTableKey *key,
				DtTwinEntry *old)
{
	DtTableStripe *stripe = dt_table_stripe(table, key->hash);
	dsa_pointer chunk = InvalidDsaPointer;
	uint32		pos;

	LWLockAcquire(&stripe->lock, LW_EXCLUSIVE);
	if (stripe->nslots > 0 && dt_table_probe(area, stripe, key, &pos))
	{
		chunk = dt_table_slots(area, stripe)[pos];
		memcpy(old, dsa_get_address(area, chunk), offsetof(DtTwinEntry, data));
		dt_table_clear_slot(area, stripe, pos);
	}
	LWLockRelease(&stripe->lock);
	return chunk;
}

/* ----------------------------------------------------------------
 * Scans: every entry, one stripe locked at a time
 * ----------------------------------------------------------------
 */

void
dt_table_scan_init(DtTableScan *scan, dsa_area *area, DtTwinTable *table,
				   bool exclusive)
{
	scan->area = area;
	scan->table = table;
	scan->exclusive = exclusive;
	scan->stripe = -1;
	scan->pos = 0;
	scan->slots = NULL;
	scan->nslots = 0;
}

/*
 * Ask for the entry DT_SCAN_PREFETCH slots ahead: the slots are read in
 * order, but the entries they point to are scattered over the area, a
 * cache miss each; asked for early, several misses are in flight at once.
 */
static inline void
dt_table_prefetch(DtTableScan *scan)
{
#ifdef __GNUC__
	uint32		ahead = scan->pos + DT_SCAN_PREFETCH;

	if (ahead < scan->nslots && DT_SLOT_IS_ENTRY(scan->slots[ahead]))
		__builtin_prefetch(dsa_get_address(scan->area, scan->slots[ahead]));
#endif
}

/* The next entry, or NULL at the end (nothing locked then). */
DtTwinEntry *
dt_table_scan_next(DtTableScan *scan)
{
	for (;;)
	{
		while (scan->pos < scan->nslots)
		{
			dsa_pointer s = scan->slots[scan->pos];

			dt_table_prefetch(scan);
			scan->pos++;
			if (DT_SLOT_IS_ENTRY(s))
				return dsa_get_address(scan->area, s);
		}
		if (scan->stripe >= 0)
			LWLockRelease(&scan->table->stripes[scan->stripe].stripe.lock);
		if (++scan->stripe == DT_TABLE_STRIPES)
		{
			scan->nslots = 0;
			return NULL;
		}
		{
			DtTableStripe *stripe = &scan->table->stripes[scan->stripe].stripe;
			uint32		i;

			LWLockAcquire(&stripe->lock,
						  scan->exclusive ? LW_EXCLUSIVE : LW_SHARED);
			scan->pos = 0;
			scan->nslots = stripe->nslots;
			scan->slots = stripe->nslots > 0 ?
				dt_table_slots(scan->area, stripe) : NULL;
			for (i = 0; i < DT_SCAN_PREFETCH && i < scan->nslots; i++)
			{
#ifdef __GNUC__
				if (DT_SLOT_IS_ENTRY(scan->slots[i]))
					__builtin_prefetch(dsa_get_address(scan->area, scan->slots[i]));
#endif
			}
		}
	}
}

/*
 * Unlink the entry the scan returned last (an exclusive scan); returns its
 * chunk for the caller to free.
 */
dsa_pointer
dt_table_scan_unlink(DtTableScan *scan)
{
	DtTableStripe *stripe = &scan->table->stripes[scan->stripe].stripe;
	dsa_pointer chunk = scan->slots[scan->pos - 1];

	Assert(scan->exclusive && DT_SLOT_IS_ENTRY(chunk));
	dt_table_clear_slot(scan->area, stripe, scan->pos - 1);
	return chunk;
}

/* End a scan before its end: release the stripe it holds. */
void
dt_table_scan_end(DtTableScan *scan)
{
	if (scan->stripe >= 0 && scan->stripe < DT_TABLE_STRIPES)
		LWLockRelease(&scan->table->stripes[scan->stripe].stripe.lock);
	scan->stripe = DT_TABLE_STRIPES;
	scan->nslots = 0;
}

/*
 * After every entry was unlinked (no worker of the database runs): give
 * the slot arrays back and forget the promises of batches that are gone.
 */
void
dt_table_reset(dsa_area *area, DtTwinTable *table)
{
	int			i;

	for (i = 0; i < DT_TABLE_STRIPES; i++)
	{
		DtTableStripe *stripe = &table->stripes[i].stripe;

		LWLockAcquire(&stripe->lock, LW_EXCLUSIVE);
		Assert(stripe->used == 0);
		if (stripe->nslots > 0)
			dsa_free(area, stripe->slots);
		stripe->slots = InvalidDsaPointer;
		stripe->nslots = 0;
		stripe->used = stripe->tombstones = stripe->reserved = 0;
		LWLockRelease(&stripe->lock);
	}
}
