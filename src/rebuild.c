/*-------------------------------------------------------------------------
 *
 * rebuild.c
 *	  Rebuilding worker partitions in shared memory from twin_state: a
 *	  worker's own partition, and the load at start, where one worker
 *	  loads every partition.
 *
 * A worker rebuilds its partition when it starts, after a reload is
 * announced (reload.c) and after a failure around a commit: it purges the
 * partition and loads it again from twin_state (durable.c), as its batch's
 * snapshot sees it.
 *
 * The load at start.  After a restart every worker would rebuild at once,
 * and two cores filling one shared hash were measured slower together than
 * one alone (docs/performance.md, "Recovery"): each twin takes allocations
 * from the DSA area's pools and an insert under a stripe's lock of the
 * shared table, whose cache lines then pass between the cores at every
 * twin (measured with dshash, whose resizes also stopped every inserter).
 * So the first worker of a database entry to rebuild loads every
 * partition in one pass over twin_state, while the others wait, then take
 * their partition as it was loaded.
 *
 * Why a partition loaded by another worker is current: a partition's rows
 * of twin_state are written by its own worker, and by the transactions that
 * announce a reload.  When the load starts no worker of the entry has
 * committed a batch (the server has just started, or the entry has just
 * been given to its database: each worker's first rebuild comes here),
 * and a waiting worker commits nothing before it takes its partition.  The
 * loader's batch saw the reloads up to 'generation' (see
 * dt_worker_reload_deferred); a worker whose own batch saw the same
 * generation takes its partition, one that saw a later reload loads its
 * own.  A partition is taken once: a worker that starts again later (its
 * predecessor may have committed) loads its own.
 *
 * The loader marks only its own partition loaded (store_extension); each
 * other partition is marked by its worker when it takes it, so a partition
 * whose worker does not run (yet) is read from twin_state by the readers,
 * as before the load, and a reload it misses cannot leave it stale.
 *
 * When the loader fails (an ERROR, or it exits), the others load their own
 * partitions: a rebuild purges its partition first, so whatever the loader
 * put there goes; readers did not use it, as it was not marked.  After an
 * ERROR the loader purges it itself first, so that a partition whose
 * worker does not run holds no twins, memory or counts.
 *
 * Waiting on a condition variable hides the wait from the deadlock
 * detector, so the loader must never wait for a heavyweight lock that only
 * a waiter holds.  A waiter holds what its batch took before its rebuild
 * (ROW SHARE on the registry, read locks), the loader the same and then
 * reads the registry and twin_state: whatever DDL waits for a waiter's
 * lock waits for the loader's too, and a lock the loader asks for again is
 * granted ahead of it.  Keep it so: take nothing new before the rebuild.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "pgstat.h"
#include "storage/condition_variable.h"
#include "storage/spin.h"
#include "utils/hsearch.h"

#include "dt_internal.h"

/* the partitions of the load at start are bits of a uint64 */
StaticAssertDecl(DT_MAX_WORKERS <= 64, "start_loaded has a bit per worker");

/* whether this process is the loader of the load at start, in progress */
static bool loading_all = false;

/* twins loaded, per model and partition */
typedef struct DtLoadCountKey
{
	int32		model_id;
	int32		partition;
} DtLoadCountKey;

typedef struct DtLoadCount
{
	DtLoadCountKey key;
	int64		twins;
} DtLoadCount;

typedef struct DtLoadProgress
{
	int			partition;		/* the one loaded; -1: every partition */
	int64		loaded[DT_MAX_WORKERS]; /* twins per partition */
	HTAB	   *per_model;
} DtLoadProgress;

static void
dt_rebuild_load_twin(void *arg, int32 model_id, const char *twin_id, int idlen,
					 const char *image, Size len, int64 event_count,
					 TimestampTz updated_at)
{
	DtLoadProgress *progress = arg;
	DtLoadCountKey key;
	DtLoadCount *count;
	DtModel    *model = dt_model_lookup_id(model_id);
	int			partition = progress->partition;
	bool		found;

	if (partition < 0)
		partition = dt_partition_of(twin_id, idlen, dt_shared->nworkers);
	/* the caller refreshed the model cache just before the scan */
	dt_store_load_twin(model_id, twin_id, idlen, image, len,
					   model ? (uint16) model->state_version : 0,
					   event_count, updated_at, &dt_db->slots[partition]);
	memset(&key, 0, sizeof(key));
	key.model_id = model_id;
	key.partition = partition;
	count = hash_search(progress->per_model, &key, HASH_ENTER, &found);
	if (!found)
		count->twins = 0;
	count->twins++;
	progress->loaded[partition]++;
}

/* A partition's readers take it from twin_state until it is loaded. */
static void
dt_rebuild_unmark(int partition)
{
	DtWorkerSlot *slot = &dt_db->slots[partition];

	/* a reader already copying it sees the epoch move and copies again */
	SpinLockAcquire(&slot->mutex);
	slot->store_extension = InvalidOid;
	slot->load_epoch++;
	SpinLockRelease(&slot->mutex);
	dt_store_purge_partition(partition, dt_shared->nworkers);
	dt_twin_count_forget(partition, NULL);
}

static void
dt_rebuild_mark(int partition, Oid extension)
{
	DtWorkerSlot *slot = &dt_db->slots[partition];

	SpinLockAcquire(&slot->mutex);
	slot->store_extension = extension;
	slot->load_epoch++;
	SpinLockRelease(&slot->mutex);
}

/*
 * Load one partition (partition >= 0) or every partition (-1) from
 * twin_state with the active snapshot, into partitions already unmarked,
 * and count their twins per model.  progress->loaded says how many went
 * into each partition.
 */
static void
dt_rebuild_load(int partition, DtLoadProgress *progress)
{
	HASHCTL		ctl;
	HASH_SEQ_STATUS status;
	DtLoadCount *count;

	/*
	 * The models as they are now, whatever the cache says: the load keeps
	 * only rows of models it knows (as a join would), and tags the images
	 * with their state versions.  Rows written into the registry by COPY
	 * (a restore of the extension's data) invalidate no cache, and the
	 * rebuild that restore calls for must see them.
	 */
	(void) dt_models_refresh(true);

	memset(progress, 0, sizeof(*progress));
	progress->partition = partition;
	ctl.keysize = sizeof(DtLoadCountKey);
	ctl.entrysize = sizeof(DtLoadCount);
	ctl.hcxt = CurrentMemoryContext;
	progress->per_model = hash_create("digitaltwin twins loaded per model", 16, &ctl,
									  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	dt_durable_load(partition, dt_shared->nworkers, dt_rebuild_load_twin, progress);
	hash_seq_init(&status, progress->per_model);
	while ((count = hash_seq_search(&status)) != NULL)
		dt_twin_count_add(count->key.model_id, count->key.partition, count->twins);
	hash_destroy(progress->per_model);
	progress->per_model = NULL;
}

/*
 * A worker's own partition: purge it and load it again.  Returns the
 * twins loaded.
 */
int64
dt_rebuild_partition(int partition, Oid extension)
{
	DtLoadProgress progress;

	dt_rebuild_unmark(partition);
	dt_rebuild_load(partition, &progress);
	dt_rebuild_mark(partition, extension);
	return progress.loaded[partition];
}

/*
 * What this worker's rebuild is to do, given the reload generation its
 * batch saw (with no reload pending) and its extension: load every
 * partition (the first to come), take its partition from that load
 * (waiting for it to end), or load its own.
 */
DtRebuildRole
dt_rebuild_role(int partition, uint64 generation, Oid extension)
{
	DtDatabase *db = dt_db;
	DtRebuildRole role = DT_REBUILD_OWN;
	uint64		bit = UINT64CONST(1) << partition;

	ConditionVariablePrepareToSleep(&db->start_load_cv);
	for (;;)
	{
		bool		wait = false;

		SpinLockAcquire(&db->start_load_mutex);
		switch (db->start_load)
		{
			case DT_START_LOAD_OPEN:
				db->start_load = DT_START_LOAD_LOADING;
				loading_all = true;
				role = DT_REBUILD_ALL;
				break;
			case DT_START_LOAD_LOADING:
				wait = true;
				break;
			case DT_START_LOAD_DONE:
				if ((db->start_loaded & bit) != 0 &&
					db->start_load_generation == generation &&
					db->start_load_extension == extension)
					role = DT_REBUILD_TAKEN;
				db->start_loaded &= ~bit;
				break;
			case DT_START_LOAD_CLOSED:
				db->start_loaded &= ~bit;
				break;
		}
		SpinLockRelease(&db->start_load_mutex);
		if (!wait)
			break;
		ConditionVariableSleep(&db->start_load_cv, PG_WAIT_EXTENSION);
	}
	ConditionVariableCancelSleep();
	return role;
}

/*
 * The load at start, by the worker of 'partition' whose dt_rebuild_role()
 * said DT_REBUILD_ALL: every partition purged and loaded, this worker's
 * marked, the others left for their workers to take (dt_rebuild_take).
 * Returns the twins loaded into this worker's partition; *others, those
 * of the other partitions.
 */
int64
dt_rebuild_all(int partition, uint64 generation, Oid extension, int64 *others)
{
	DtDatabase *db = dt_db;
	DtLoadProgress progress;
	uint64		loaded = 0;
	int			p;

	Assert(loading_all);
	for (p = 0; p < dt_shared->nworkers; p++)
		dt_rebuild_unmark(p);
	dt_rebuild_load(-1, &progress);
	*others = 0;
	dt_rebuild_mark(partition, extension);
	for (p = 0; p < dt_shared->nworkers; p++)
	{
		if (p != partition)
		{
			loaded |= UINT64CONST(1) << p;
			*others += progress.loaded[p];
		}
	}

	SpinLockAcquire(&db->start_load_mutex);
	db->start_load = DT_START_LOAD_DONE;
	db->start_loaded = loaded;
	db->start_load_generation = generation;
	db->start_load_extension = extension;
	SpinLockRelease(&db->start_load_mutex);
	loading_all = false;
	ConditionVariableBroadcast(&db->start_load_cv);
	return progress.loaded[partition];
}

/*
 * A partition the load at start filled for this worker, which
 * dt_rebuild_role() said to take: mark it loaded.  Returns its twins.
 */
int64
dt_rebuild_take(int partition, Oid extension)
{
	DtWorkerSlot *slot = &dt_db->slots[partition];
	int64		twins;

	/* as a load of its own would (see dt_rebuild_load) */
	(void) dt_models_refresh(true);
	dt_rebuild_mark(partition, extension);
	SpinLockAcquire(&slot->mutex);
	twins = slot->twins;
	SpinLockRelease(&slot->mutex);
	return twins;
}

/*
 * The loader failed (an ERROR, or it exits): the waiting workers load
 * their own partitions.  After an ERROR (purge: the transaction aborted,
 * no lock is held) the other partitions are emptied first, before any
 * waiter starts its own load.  Nothing to do in any other process.
 */
void
dt_rebuild_give_up(bool purge)
{
	DtDatabase *db = dt_db;
	int			p;

	if (!loading_all)
		return;
	loading_all = false;
	for (p = 0; purge && p < dt_shared->nworkers; p++)
		dt_rebuild_unmark(p);
	SpinLockAcquire(&db->start_load_mutex);
	db->start_load = DT_START_LOAD_CLOSED;
	db->start_loaded = 0;
	SpinLockRelease(&db->start_load_mutex);
	ConditionVariableBroadcast(&db->start_load_cv);
}
