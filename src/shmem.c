/*-------------------------------------------------------------------------
 *
 * shmem.c
 *	  Shared memory of digitaltwin: worker slots and the twin hash.
 *
 * Twins live in dshash tables inside a DSA area that is created in place in
 * the main shared memory segment at postmaster start (as PG15's shared
 * memory statistics do), so it is reset by a crash-restart together with
 * everything else; dsa_set_size_limit() bounds it by digitaltwin.max_memory.
 * Each database entry (DtDatabase, digitaltwin.max_databases of them) has
 * its own pair of tables, created with the area: the databases share the
 * memory, never a table, so a twin is found only through its database's
 * entry.  A process works with one entry at a time, dt_db.
 *
 * Locking rules:
 *	- A twin entry is written only by the worker that owns its partition, and
 *	  only while holding the entry's dshash partition lock exclusively.
 *	- A state image is never modified in place: the owner allocates a new DSA
 *	  chunk, fills it, swaps the pointer under the partition lock and frees
 *	  the old chunk.  Readers copy the image while holding the partition lock
 *	  (shared), so they see one whole state.
 *	- At most one dshash entry is held at a time.  The only nested lock is
 *	  the DSA area's own lock, taken inside the partition lock by dsa_free(),
 *	  by the allocation of a new entry's twin id, by dshash's own allocations
 *	  and by dsa_get_address() when it maps a segment (key comparison reads
 *	  the stored twin id); nothing takes them the other way round.
 *	- No user code and no SPI run while a partition lock is held.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/hashfn.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/memutils.h"

#include "dt_internal.h"

/*
 * DSA area placed in the main segment, room for every database's empty
 * tables (a few kB each) and more; further memory comes from DSM.
 */
#define DT_INPLACE_DSA_SIZE \
	((Size) 1024 * 1024 + (Size) dt_max_databases * 32 * 1024)

DtShared   *dt_shared = NULL;
DtDatabase *dt_db = NULL;
dsa_area   *dt_area = NULL;
dshash_table *dt_twins = NULL;
static dshash_table *dt_counts = NULL;
static DtDatabase *attached_db = NULL;	/* whose tables dt_twins, dt_counts are */

/*
 * Twins per model, counted per worker partition: each worker counts its own
 * twins (and forgets them when it reloads its partition), while a limit
 * check adds up all partitions.  The same entry carries what the worker
 * tells of the model's events between commits (model_stats.c): how far
 * the batch in flight has got, and the rate.
 */
typedef struct DtCountKey
{
	int32		model_id;
	int32		partition;
} DtCountKey;

typedef struct DtCountEntry
{
	DtCountKey	key;
	int64		twins;
	int64		in_flight;		/* events applied by the uncommitted batch */
	TimestampTz window_start;	/* rate: events counted since then */
	int64		window_events;
	double		rate;			/* of the last window closed (>= 1 s) */
} DtCountEntry;

static const dshash_parameters dt_count_params = {
	sizeof(DtCountKey),
	sizeof(DtCountEntry),
	dshash_memcmp,
	dshash_memhash,
	0							/* tranche id, set at run time */
};

static void dt_store_out_of_memory(void) pg_attribute_noreturn();
static int	dt_shared_key_compare(const void *a, const void *b, size_t size, void *arg);
static dshash_hash dt_shared_key_hash(const void *key, size_t size, void *arg);

static const dshash_parameters dt_twin_params = {
	sizeof(DtSharedKey),
	sizeof(DtTwinEntry),
	dt_shared_key_compare,
	dt_shared_key_hash,
	0							/* tranche id, set at run time */
};

/*
 * What one twin costs in the shared area besides its state: the entry,
 * dshash's item header (next pointer and hash), its share of the bucket
 * array (dshash keeps 0.375 to 0.75 entries per bucket: counted as two
 * bucket pointers), and the twin id's chunk (DSA rounds small chunks up to
 * a multiple of 8 bytes).
 */
#define DT_TWIN_OVERHEAD(id_len) \
	(sizeof(DtTwinEntry) + sizeof(dsa_pointer) + sizeof(dshash_hash) + \
	 2 * sizeof(dsa_pointer) + TYPEALIGN(8, (id_len)))

static Size
dt_database_size(void)
{
	return MAXALIGN(add_size(offsetof(DtDatabase, slots),
							 mul_size(sizeof(DtWorkerSlot), Max(dt_workers, 1))));
}

static Size
dt_databases_offset(void)
{
	return MAXALIGN(sizeof(DtShared));
}

static Size
dt_inplace_offset(void)
{
	return add_size(dt_databases_offset(),
					mul_size(dt_database_size(), dt_max_databases));
}

static Size
dt_shmem_size(void)
{
	return add_size(dt_inplace_offset(), DT_INPLACE_DSA_SIZE);
}

static void *
dt_inplace_area(void)
{
	return (char *) dt_shared + dt_inplace_offset();
}

DtDatabase *
dt_database_entry(int index)
{
	Assert(index >= 0 && index < dt_shared->ndatabases);
	return (DtDatabase *) ((char *) dt_shared + dt_databases_offset() +
						   index * dt_shared->database_size);
}

void
dt_shmem_request(void)
{
	RequestAddinShmemSpace(dt_shmem_size());
}

static void
dt_database_init(DtDatabase *db, dsa_area *area)
{
	dshash_parameters params;
	dshash_table *table;
	int			i;

	memset(db, 0, dt_shared->database_size);
	pg_atomic_init_u64(&db->reload_generation, 0);
	pg_atomic_init_u32(&db->reload_pending, 0);
	pg_atomic_init_u64(&db->queue_generation, DT_GENERATION_UNKNOWN);
	ConditionVariableInit(&db->progress_cv);
	SpinLockInit(&db->start_load_mutex);
	ConditionVariableInit(&db->start_load_cv);
	LWLockInitialize(&db->counts_lock, dt_shared->tranche_id);
	for (i = 0; i < dt_shared->nworkers; i++)
	{
		DtWorkerSlot *slot = &db->slots[i];

		SpinLockInit(&slot->mutex);
		pg_atomic_init_u64(&slot->events_processed, 0);
		pg_atomic_init_u64(&slot->dead_letters, 0);
		pg_atomic_init_u64(&slot->alerts, 0);
		pg_atomic_init_u64(&slot->batches, 0);
	}

	params = dt_twin_params;
	params.tranche_id = dt_shared->tranche_id;
	table = dshash_create(area, &params, NULL);
	db->twins_handle = dshash_get_hash_table_handle(table);
	dshash_detach(table);
	params = dt_count_params;
	params.tranche_id = dt_shared->tranche_id;
	table = dshash_create(area, &params, NULL);
	db->counts_handle = dshash_get_hash_table_handle(table);
	dshash_detach(table);
}

void
dt_shmem_startup(void)
{
	bool		found;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	dt_shared = ShmemInitStruct("digitaltwin", dt_shmem_size(), &found);
	if (!found)
	{
		dsa_area   *area;
		int			i;

		memset(dt_shared, 0, sizeof(DtShared));
		dt_shared->tranche_id = LWLockNewTrancheId();
		dt_shared->nworkers = dt_workers;
		dt_shared->ndatabases = dt_max_databases;
		dt_shared->database_size = dt_database_size();
		LWLockInitialize(&dt_shared->lock, dt_shared->tranche_id);
		ConditionVariableInit(&dt_shared->launcher_cv);

		/*
		 * The postmaster must not create DSM segments, so the initial hash
		 * tables have to fit in the in-place part: keep the limit at that
		 * size while creating them, then raise it to the configured
		 * maximum.
		 */
		area = dsa_create_in_place(dt_inplace_area(), DT_INPLACE_DSA_SIZE,
								   dt_shared->tranche_id, NULL);
		dsa_pin(area);
		dsa_set_size_limit(area, DT_INPLACE_DSA_SIZE);
		for (i = 0; i < dt_shared->ndatabases; i++)
			dt_database_init(dt_database_entry(i), area);
		dsa_set_size_limit(area, (size_t) dt_max_memory_mb * 1024 * 1024);
		dsa_detach(area);
	}
	LWLockRelease(AddinShmemInitLock);

	LWLockRegisterTranche(dt_shared->tranche_id, "digitaltwin");
}

/*
 * Attach this process to the twin tables of its database, dt_db: the area
 * once, the tables again whenever dt_db is another entry.
 */
void
dt_attach_store(void)
{
	dshash_parameters params;
	MemoryContext old;

	dt_require_preload();
	Assert(dt_db != NULL);
	if (dt_twins != NULL && attached_db == dt_db)
		return;

	old = MemoryContextSwitchTo(TopMemoryContext);
	if (dt_area == NULL)
	{
		LWLockRegisterTranche(dt_shared->tranche_id, "digitaltwin");
		dt_area = dsa_attach_in_place(dt_inplace_area(), NULL);
		dsa_pin_mapping(dt_area);
	}
	if (dt_twins != NULL)
	{
		dshash_detach(dt_twins);
		dshash_detach(dt_counts);
		dt_twins = dt_counts = NULL;
	}
	params = dt_twin_params;
	params.tranche_id = dt_shared->tranche_id;
	dt_twins = dshash_attach(dt_area, &params, dt_db->twins_handle, NULL);
	params = dt_count_params;
	params.tranche_id = dt_shared->tranche_id;
	dt_counts = dshash_attach(dt_area, &params, dt_db->counts_handle, NULL);
	attached_db = dt_db;
	MemoryContextSwitchTo(old);
}

void
dt_make_key(DtTwinKey *key, int32 model_id, const char *twin_id, int len)
{
	Assert(len <= DT_TWIN_ID_MAXLEN);
	memset(key, 0, sizeof(DtTwinKey));
	key->model_id = model_id;
	memcpy(key->twin_id, twin_id, len);
}

/*
 * A byte of the twin id's hash, kept in the key: comparing keys then reads
 * the id's own chunk (a cache miss each) only for one in 256 of the other
 * twins met in a bucket's chain.  dshash compares a key with each entry of
 * the chain, not their hashes first.  The top bits of the hash pick the
 * bucket, as many as the table has doublings (21 for a million twins), so
 * they are nearly the same along a chain: the byte mixes all 32 bits.
 */
static inline uint8
dt_id_tag(const char *twin_id, int idlen)
{
	return (uint8) murmurhash32(hash_bytes((const unsigned char *) twin_id,
										   idlen));
}

/* The form of a twin's key used to look it up in the shared hash. */
static void
dt_local_key(DtSharedKey *skey, int32 model_id, const char *twin_id, int idlen)
{
	skey->model_id = model_id;
	skey->id_len = (uint16) idlen;
	skey->id_is_local = true;
	skey->id_tag = dt_id_tag(twin_id, idlen);
	skey->id.local = twin_id;
}

static void
dt_lookup_key(DtSharedKey *skey, const DtTwinKey *key)
{
	dt_local_key(skey, key->model_id, key->twin_id, strlen(key->twin_id));
}

static const char *
dt_shared_key_id(const DtSharedKey *key)
{
	if (key->id_is_local)
		return key->id.local;
	return (const char *) dsa_get_address(dt_area, key->id.shared);
}

/* The twin id of an entry, not NUL-terminated: entry->key.id_len bytes. */
const char *
dt_entry_twin_id(const DtTwinEntry *entry)
{
	return dt_shared_key_id(&entry->key);
}

static int
dt_shared_key_compare(const void *a, const void *b, size_t size, void *arg)
{
	const DtSharedKey *ka = a;
	const DtSharedKey *kb = b;

	if (ka->model_id != kb->model_id || ka->id_len != kb->id_len ||
		ka->id_tag != kb->id_tag)
		return 1;
	return memcmp(dt_shared_key_id(ka), dt_shared_key_id(kb), ka->id_len);
}

static dshash_hash
dt_shared_key_hash(const void *key, size_t size, void *arg)
{
	const DtSharedKey *k = key;

	return hash_combine(murmurhash32((uint32) k->model_id),
						hash_bytes((const unsigned char *) dt_shared_key_id(k),
								   k->id_len));
}

/*
 * Free an entry's chunks and delete it.  The caller holds its partition
 * lock; dshash_delete_entry() releases it, dshash_delete_current() not.
 */
static void
dt_entry_free(DtTwinEntry *entry)
{
	if (DsaPointerIsValid(entry->state))
		dsa_free(dt_area, entry->state);
	Assert(!entry->key.id_is_local);
	dsa_free(dt_area, entry->key.id.shared);
}

/*
 * The partition (worker) that owns a twin.  Only the twin id is hashed, so
 * the assignment does not depend on anything a transaction could change.
 */
int
dt_partition_of(const char *twin_id, int len, int partitions)
{
	uint32		h;

	if (partitions <= 1)
		return 0;
	h = hash_bytes((const unsigned char *) twin_id, len);
	return (int) (h % (uint32) partitions);
}

static int
dt_entry_partition(const DtTwinEntry *entry, int partitions)
{
	return dt_partition_of(dt_entry_twin_id(entry), entry->key.id_len, partitions);
}

static void
dt_slot_account(DtWorkerSlot *slot, int64 twins, int64 bytes)
{
	SpinLockAcquire(&slot->mutex);
	slot->twins += twins;
	slot->memory_bytes += bytes;
	SpinLockRelease(&slot->mutex);
}

/*
 * A twin's entry by model and id, or NULL.  The entry's partition lock is
 * held (shared) until dt_store_release(): copy what is needed and release,
 * calling no user code in between.
 */
DtTwinEntry *
dt_store_find(int32 model_id, const char *twin_id, int idlen)
{
	DtSharedKey skey;

	dt_local_key(&skey, model_id, twin_id, idlen);
	return dshash_find(dt_twins, &skey, false);
}

void
dt_store_release(DtTwinEntry *entry)
{
	dshash_release_lock(dt_twins, entry);
}

bool
dt_store_fetch(const DtTwinKey *key, MemoryContext cxt, char **image,
			   Size *len, int64 *event_count)
{
	DtSharedKey skey;
	DtTwinEntry *entry;
	bool		found = false;

	dt_lookup_key(&skey, key);
	entry = dshash_find(dt_twins, &skey, false);
	if (entry == NULL)
		return false;
	if (!entry->pending && DsaPointerIsValid(entry->state))
	{
		/* palloc may ERROR; the abort path releases the partition lock */
		*image = MemoryContextAlloc(cxt, entry->state_len);
		memcpy(*image, dsa_get_address(dt_area, entry->state), entry->state_len);
		*len = entry->state_len;
		*event_count = entry->event_count;
		found = true;
	}
	dshash_release_lock(dt_twins, entry);
	return found;
}

/*
 * Forget every twin of one partition.  A worker does this when it starts,
 * before reloading its twins from the durable table: whatever shared memory
 * held may predate the last commit of the worker's previous incarnation.
 */
void
dt_store_purge_partition(int partition, int partitions)
{
	dshash_seq_status status;
	DtTwinEntry *entry;
	DtWorkerSlot *slot = &dt_db->slots[partition];

	dshash_seq_init(&status, dt_twins, true);
	while ((entry = dshash_seq_next(&status)) != NULL)
	{
		if (dt_entry_partition(entry, partitions) != partition)
			continue;
		dt_entry_free(entry);
		dshash_delete_current(&status);
	}
	dshash_seq_term(&status);

	SpinLockAcquire(&slot->mutex);
	slot->twins = 0;
	slot->memory_bytes = 0;
	SpinLockRelease(&slot->mutex);
}

/*
 * Forget every twin of dt_db and its counts: the launcher does this when
 * the database is no longer served (extension or database dropped), so
 * that its memory goes back to the other databases at once.  No worker of
 * the database runs.
 */
void
dt_store_purge_database(void)
{
	dshash_seq_status status;
	DtTwinEntry *entry;
	DtCountEntry *count;
	int			i;

	dshash_seq_init(&status, dt_twins, true);
	while ((entry = dshash_seq_next(&status)) != NULL)
	{
		dt_entry_free(entry);
		dshash_delete_current(&status);
	}
	dshash_seq_term(&status);

	LWLockAcquire(&dt_db->counts_lock, LW_EXCLUSIVE);
	dshash_seq_init(&status, dt_counts, true);
	while ((count = dshash_seq_next(&status)) != NULL)
		dshash_delete_current(&status);
	dshash_seq_term(&status);
	LWLockRelease(&dt_db->counts_lock);

	for (i = 0; i < dt_shared->nworkers; i++)
	{
		DtWorkerSlot *slot = &dt_db->slots[i];

		SpinLockAcquire(&slot->mutex);
		slot->twins = 0;
		slot->memory_bytes = 0;
		slot->store_extension = InvalidOid;
		slot->load_epoch++;
		SpinLockRelease(&slot->mutex);
	}
}

/*
 * Forget what a worker slot says of its last database (its entry is being
 * freed, its worker is gone, its twins purged), so that the next database
 * given the entry starts from zero.
 */
void
dt_slot_clear(DtWorkerSlot *slot)
{
	SpinLockAcquire(&slot->mutex);
	slot->extension_gone = false;
	memset(slot->stopped_events, 0, sizeof(slot->stopped_events));
	slot->stopped_extension = InvalidOid;
	slot->fetches = slot->covered_fetch = slot->message_batches = 0;
	slot->covered_through = 0;
	slot->last_batch_at = 0;
	slot->window_start = 0;
	slot->window_events = 0;
	slot->events_per_second = 0;
	slot->last_error[0] = '\0';
	SpinLockRelease(&slot->mutex);
	pg_atomic_write_u64(&slot->events_processed, 0);
	pg_atomic_write_u64(&slot->dead_letters, 0);
	pg_atomic_write_u64(&slot->alerts, 0);
	pg_atomic_write_u64(&slot->batches, 0);
}

/*
 * Forget the twins of models that no longer exist (drop_model).
 */
void
dt_store_purge_models(int partition, int partitions,
					  bool (*is_live) (int32 model_id))
{
	dshash_seq_status status;
	DtTwinEntry *entry;
	int64		twins = 0;
	int64		bytes = 0;

	dshash_seq_init(&status, dt_twins, true);
	while ((entry = dshash_seq_next(&status)) != NULL)
	{
		if (dt_entry_partition(entry, partitions) != partition ||
			is_live(entry->key.model_id))
			continue;
		if (!entry->pending)
		{
			twins++;
			bytes += entry->state_len + DT_TWIN_OVERHEAD(entry->key.id_len);
		}
		dt_entry_free(entry);
		dshash_delete_current(&status);
	}
	dshash_seq_term(&status);
	dt_slot_account(&dt_db->slots[partition], -twins, -bytes);
}

/*
 * Allocate a DSA chunk holding a copy of a state image.  Fails with a clear
 * ERROR when digitaltwin.max_memory is exhausted; callers run inside a
 * transaction that has not committed yet, so nothing is lost.
 */
static void
dt_store_out_of_memory(void)
{
	ereport(ERROR,
			(errcode(ERRCODE_OUT_OF_MEMORY),
			 errmsg("digitaltwin shared memory for twins is exhausted"),
			 errdetail("digitaltwin.max_memory is %d MB; events that need more are dead-lettered.",
					   dt_max_memory_mb),
			 errhint("Increase digitaltwin.max_memory, or end twins by returning NULL from the model.")));
}

/*
 * digitaltwin.max_memory_per_database: the twins of one database may not
 * take more, so that a database filling its share leaves the others
 * theirs.  Checked as a batch prepares its new images: the memory its
 * database's workers account for (published twins), plus what the batch
 * has grown so far, plus the next twin's growth (a new twin: its state and
 * overhead; a changed one: what its state grew).  Each worker checks its
 * own batch, so the database can go past the limit by what its workers'
 * batches in flight add.
 */
static int64 quota_batch_bytes = 0;

void
dt_store_quota_begin(void)
{
	quota_batch_bytes = 0;
}

/* What a twin costs in shared memory besides its state. */
Size
dt_store_twin_overhead(int id_len)
{
	return DT_TWIN_OVERHEAD(id_len);
}

void
dt_store_quota_check(int64 growth)
{
	int64		quota = (int64) dt_max_memory_per_database_mb * 1024 * 1024;
	int64		used = 0;
	int			i;

	if (quota == 0 || growth <= 0)
		return;
	for (i = 0; i < dt_shared->nworkers; i++)
	{
		SpinLockAcquire(&dt_db->slots[i].mutex);
		used += dt_db->slots[i].memory_bytes;
		SpinLockRelease(&dt_db->slots[i].mutex);
	}
	if (used + quota_batch_bytes + growth > quota)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("digitaltwin shared memory for the twins of database \"%s\" is exhausted",
						dt_db->name),
				 errdetail("digitaltwin.max_memory_per_database is %d MB; events that need more are dead-lettered.",
						   dt_max_memory_per_database_mb),
				 errhint("Increase digitaltwin.max_memory_per_database, or end twins by returning NULL from the model.")));
	quota_batch_bytes += growth;
}

dsa_pointer
dt_store_alloc_image(const char *image, Size len)
{
	dsa_pointer dp;

	dp = dsa_allocate_extended(dt_area, len, DSA_ALLOC_NO_OOM | DSA_ALLOC_HUGE);
	if (!DsaPointerIsValid(dp))
		dt_store_out_of_memory();
	memcpy(dsa_get_address(dt_area, dp), image, len);
	return dp;
}

/*
 * Give a locked entry its new state image, release it, free the image it
 * had and count the change in the worker's slot (a pending entry was not
 * counted yet).
 */
static void
dt_entry_set_state(DtTwinEntry *entry, dsa_pointer image, Size len,
				   uint16 state_version, int64 event_count,
				   TimestampTz updated_at, DtWorkerSlot *slot)
{
	bool		was_new = entry->pending;
	dsa_pointer old = entry->state;
	Size		old_len = entry->state_len;
	uint16		id_len = entry->key.id_len;

	entry->state = image;
	entry->state_len = len;
	entry->state_version = state_version;
	entry->event_count = event_count;
	entry->updated_at = updated_at;
	entry->pending = false;
	dshash_release_lock(dt_twins, entry);

	if (DsaPointerIsValid(old))
		dsa_free(dt_area, old);
	if (was_new)
		dt_slot_account(slot, 1, len + DT_TWIN_OVERHEAD(id_len));
	else
		dt_slot_account(slot, 0, (int64) len - (int64) old_len);
}

/*
 * Find or insert a twin's entry, returned locked.  The id gets its own
 * chunk before the entry exists: an entry linked into the hash with a key
 * pointing into this backend's memory would be read by every backend, and
 * allocating may ERROR (dsa_allocate may fail to create a segment even
 * with DSA_ALLOC_NO_OOM); on an error, image (if valid) is freed too.  An
 * existing twin does not need the chunk: *unused_id is to be freed after
 * the lock is released (InvalidDsaPointer when the entry is new).
 */
static DtTwinEntry *
dt_store_find_or_insert(int32 model_id, const char *twin_id, int idlen,
						dsa_pointer image, bool *found, dsa_pointer *unused_id)
{
	DtSharedKey skey;
	DtTwinEntry *entry;
	dsa_pointer id = dsa_allocate_extended(dt_area, idlen, DSA_ALLOC_NO_OOM);

	if (!DsaPointerIsValid(id))
	{
		if (DsaPointerIsValid(image))
			dsa_free(dt_area, image);
		dt_store_out_of_memory();
	}
	memcpy(dsa_get_address(dt_area, id), twin_id, idlen);
	skey.model_id = model_id;
	skey.id_len = (uint16) idlen;
	skey.id_is_local = false;
	skey.id_tag = dt_id_tag(twin_id, idlen);
	skey.id.shared = id;

	PG_TRY();
	{
		entry = dshash_find_or_insert(dt_twins, &skey, found);
	}
	PG_CATCH();
	{
		dsa_free(dt_area, id);
		if (DsaPointerIsValid(image))
			dsa_free(dt_area, image);
		PG_RE_THROW();
	}
	PG_END_TRY();
	*unused_id = *found ? id : InvalidDsaPointer;
	return entry;
}

/*
 * Load one twin from the durable state (worker start).  One hash operation
 * per twin, not the three of a batch's publication (reserve, install,
 * count): nothing is committed in between here, and a reader does not take
 * the partition from shared memory before it is loaded whole (load_epoch).
 */
void
dt_store_load_twin(int32 model_id, const char *twin_id, int idlen,
				   const char *image, Size len, uint16 state_version,
				   int64 event_count, TimestampTz updated_at,
				   DtWorkerSlot *slot)
{
	DtTwinEntry *entry;
	dsa_pointer dp;
	dsa_pointer id;
	bool		found;

	Assert(idlen <= DT_TWIN_ID_MAXLEN);
	dp = dt_store_alloc_image(image, len);
	entry = dt_store_find_or_insert(model_id, twin_id, idlen, dp, &found, &id);
	if (!found)
	{
		entry->pending = true;
		entry->state = InvalidDsaPointer;
		entry->state_len = 0;
	}
	/* (found: a twin a batch published before a rebuild) */
	dt_entry_set_state(entry, dp, len, state_version, event_count, updated_at, slot);
	if (DsaPointerIsValid(id))
		dsa_free(dt_area, id);
}

/*
 * Make sure an entry exists for a twin that a batch is about to publish, so
 * that publication after commit needs no allocation.  A new entry stays
 * 'pending' (invisible to readers) until published or abandoned.
 * Returns true if the entry was created here.
 */
bool
dt_store_reserve_entry(const DtTwinKey *key)
{
	DtTwinEntry *entry;
	dsa_pointer id;
	bool		found;

	entry = dt_store_find_or_insert(key->model_id, key->twin_id, strlen(key->twin_id),
									InvalidDsaPointer, &found, &id);
	if (!found)
	{
		entry->pending = true;
		entry->state = InvalidDsaPointer;
		entry->state_len = 0;
		entry->event_count = 0;
		entry->updated_at = 0;
	}
	dshash_release_lock(dt_twins, entry);
	if (DsaPointerIsValid(id))
		dsa_free(dt_area, id);
	return !found;
}

/*
 * After commit: overwrite a twin's state with an image of the same length,
 * in its chunk.  Readers copy an image only under the partition lock, which
 * is held exclusively here, so they see the old state or the new one whole.
 * Needs no memory: a twin whose state keeps its size goes on being updated
 * when digitaltwin.max_memory is exhausted.
 */
void
dt_store_overwrite(const DtTwinKey *key, const char *image, Size len,
				   uint16 state_version, int64 event_count, TimestampTz updated_at)
{
	DtSharedKey skey;
	DtTwinEntry *entry;

	dt_lookup_key(&skey, key);
	entry = dshash_find(dt_twins, &skey, true);
	if (entry == NULL || entry->state_len != len || !DsaPointerIsValid(entry->state))
		elog(PANIC, "digitaltwin: twin entry to overwrite vanished or changed size");
	memcpy(dsa_get_address(dt_area, entry->state), image, len);
	entry->state_version = state_version;
	entry->event_count = event_count;
	entry->updated_at = updated_at;
	dshash_release_lock(dt_twins, entry);
}

/*
 * After commit: install a prepared image.  Cannot fail: the entry and the
 * chunk exist already.
 */
void
dt_store_install(const DtTwinKey *key, dsa_pointer image, Size len,
				 uint16 state_version, int64 event_count,
				 TimestampTz updated_at, DtWorkerSlot *slot)
{
	DtSharedKey skey;
	DtTwinEntry *entry;

	dt_lookup_key(&skey, key);
	entry = dshash_find(dt_twins, &skey, true);
	if (entry == NULL)
		elog(PANIC, "digitaltwin: reserved twin entry vanished");
	dt_entry_set_state(entry, image, len, state_version, event_count, updated_at, slot);
}

/*
 * After commit: a twin ended (its model returned NULL).
 */
void
dt_store_remove(const DtTwinKey *key, DtWorkerSlot *slot)
{
	DtSharedKey skey;
	DtTwinEntry *entry;
	int64		bytes;
	bool		was_pending;

	dt_lookup_key(&skey, key);
	entry = dshash_find(dt_twins, &skey, true);
	if (entry == NULL)
		return;
	bytes = entry->state_len + DT_TWIN_OVERHEAD(entry->key.id_len);
	was_pending = entry->pending;
	dt_entry_free(entry);
	dshash_delete_entry(dt_twins, entry);

	if (!was_pending)
		dt_slot_account(slot, -1, -bytes);
}

/*
 * After abort: drop an entry reserved by the failed batch, if still pending.
 */
void
dt_store_unreserve(const DtTwinKey *key)
{
	DtSharedKey skey;
	DtTwinEntry *entry;

	dt_lookup_key(&skey, key);
	entry = dshash_find(dt_twins, &skey, true);
	if (entry == NULL)
		return;
	if (entry->pending)
	{
		dt_entry_free(entry);
		dshash_delete_entry(dt_twins, entry);
	}
	else
		dshash_release_lock(dt_twins, entry);
}

/* ----------------------------------------------------------------
 * Twins per model
 * ----------------------------------------------------------------
 */

static int64
dt_twin_count_get(int32 model_id, int partition)
{
	DtCountKey	key = {model_id, partition};
	DtCountEntry *entry;
	int64		twins = 0;

	entry = dshash_find(dt_counts, &key, false);
	if (entry != NULL)
	{
		twins = entry->twins;
		dshash_release_lock(dt_counts, entry);
	}
	return twins;
}

static void
dt_count_entry_init(DtCountEntry *entry)
{
	entry->twins = 0;
	entry->in_flight = 0;
	entry->window_start = 0;
	entry->window_events = 0;
	entry->rate = 0;
}

static void
dt_twin_count_add_locked(int32 model_id, int partition, int64 delta)
{
	DtCountKey	key = {model_id, partition};
	DtCountEntry *entry;
	bool		found;

	entry = dshash_find_or_insert(dt_counts, &key, &found);
	if (!found)
		dt_count_entry_init(entry);
	entry->twins += delta;
	dshash_release_lock(dt_counts, entry);
}

/*
 * Count one more twin of a model in a partition, unless the model already
 * has 'limit' twins over all partitions (limit 0: no limit).  The check and
 * the increment happen under counts_lock, so that concurrent workers cannot
 * together go past the limit.  Lock order: counts_lock, then one dshash
 * partition lock at a time.
 */
bool
dt_twin_count_reserve(int32 model_id, int partition, int partitions, int64 limit)
{
	int64		total = 0;
	int			p;

	LWLockAcquire(&dt_db->counts_lock, LW_EXCLUSIVE);
	if (limit > 0)
	{
		for (p = 0; p < partitions; p++)
			total += dt_twin_count_get(model_id, p);
		if (total >= limit)
		{
			LWLockRelease(&dt_db->counts_lock);
			return false;
		}
	}
	dt_twin_count_add_locked(model_id, partition, 1);
	LWLockRelease(&dt_db->counts_lock);
	return true;
}

void
dt_twin_count_add(int32 model_id, int partition, int64 delta)
{
	LWLockAcquire(&dt_db->counts_lock, LW_EXCLUSIVE);
	dt_twin_count_add_locked(model_id, partition, delta);
	LWLockRelease(&dt_db->counts_lock);
}

/*
 * Forget a partition's counts: of every model (is_live NULL: the worker is
 * reloading its partition), or of the models that no longer exist.
 */
void
dt_twin_count_forget(int partition, bool (*is_live) (int32 model_id))
{
	dshash_seq_status status;
	DtCountEntry *entry;

	LWLockAcquire(&dt_db->counts_lock, LW_EXCLUSIVE);
	dshash_seq_init(&status, dt_counts, true);
	while ((entry = dshash_seq_next(&status)) != NULL)
	{
		if (entry->key.partition == partition &&
			(is_live == NULL || !is_live(entry->key.model_id)))
			dshash_delete_current(&status);
	}
	dshash_seq_term(&status);
	LWLockRelease(&dt_db->counts_lock);
}

/* ----------------------------------------------------------------
 * Events of each model between commits (model_stats.c)
 * ----------------------------------------------------------------
 */

/*
 * A worker tells how its batch in flight is going: per model, the events
 * applied so far (in_flight, 0 once the batch has ended) and the events
 * to add to the rate's window (negative when a batch rolled back what it
 * had told).  A window closes once it is a second old.
 */
void
dt_model_progress_publish(int partition, const DtModelProgress *progress, int n)
{
	TimestampTz now = GetCurrentTimestamp();
	int			i;

	LWLockAcquire(&dt_db->counts_lock, LW_EXCLUSIVE);
	for (i = 0; i < n; i++)
	{
		DtCountKey	key = {progress[i].model_id, partition};
		DtCountEntry *entry;
		bool		found;

		entry = dshash_find_or_insert(dt_counts, &key, &found);
		if (!found)
			dt_count_entry_init(entry);
		entry->in_flight = progress[i].in_flight;
		if (entry->window_start == 0)
			entry->window_start = now;
		entry->window_events = Max(entry->window_events + progress[i].new_events, 0);
		if (TimestampDifferenceExceeds(entry->window_start, now, 1000))
		{
			entry->rate = entry->window_events /
				((now - entry->window_start) / (double) USECS_PER_SEC);
			entry->window_start = now;
			entry->window_events = 0;
		}
		dshash_release_lock(dt_counts, entry);
	}
	LWLockRelease(&dt_db->counts_lock);
}

/*
 * What shared memory knows of each model of this database, per partition:
 * twins, events in flight and rate.  The rate is that of the last window
 * closed, unless that is more than two seconds ago (no batch has told
 * anything since: the open window's own rate, which falls towards 0 as
 * the model stays idle) or no window has closed yet (the first second of
 * a batch: the open window's rate so far).
 */
int
dt_model_live_collect(DtModelLive **out)
{
	TimestampTz now = GetCurrentTimestamp();
	dshash_seq_status status;
	DtCountEntry *entry;
	int			n = 0;
	int			size = 16;
	DtModelLive *rows = palloc(sizeof(DtModelLive) * size);

	dt_attach_store();
	LWLockAcquire(&dt_db->counts_lock, LW_SHARED);
	dshash_seq_init(&status, dt_counts, false);
	while ((entry = dshash_seq_next(&status)) != NULL)
	{
		DtModelLive *row;

		if (n == size)
		{
			size *= 2;
			rows = repalloc(rows, sizeof(DtModelLive) * size);
		}
		row = &rows[n++];
		row->model_id = entry->key.model_id;
		row->partition = entry->key.partition;
		row->twins = entry->twins;
		row->in_flight = entry->in_flight;
		if (entry->window_start == 0 || now <= entry->window_start)
			row->events_per_second = 0;
		else if (entry->rate > 0 &&
				 !TimestampDifferenceExceeds(entry->window_start, now, 2000))
			row->events_per_second = entry->rate;
		else
			row->events_per_second = entry->window_events /
				((now - entry->window_start) / (double) USECS_PER_SEC);
	}
	dshash_seq_term(&status);
	LWLockRelease(&dt_db->counts_lock);
	*out = rows;
	return n;
}
