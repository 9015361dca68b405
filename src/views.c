/*-------------------------------------------------------------------------
 *
 * views.c
 *	  Set-returning functions behind the live views digitaltwin.twins and
 *	  digitaltwin.stats.
 *
 * dt_view_collect_twins() copies the published twins while holding only
 * the shared lock of one partition of the hash at a time.  A jsonb state is
 * copied as it is; any other state type is copied as its image and
 * converted to jsonb after every lock is released: to_jsonb() calls type
 * output functions, which must not run under an LWLock.
 *
 * Converting a model's states can fail (its composite type altered behind
 * the extension's back, an output function that raises): each model's
 * states are converted in one subtransaction, and if that fails, the
 * model's twins show a NULL state and one WARNING names the model and the
 * error; the other models are not affected.  jsonb states need no
 * conversion and no subtransaction.  (In parallel mode no subtransaction
 * can start; there an error fails the query, as it did before 1.4.)
 *
 * Shared memory holds a worker's twins only once that worker has loaded
 * them from digitaltwin.twin_state.  Until then (on a hot standby, where
 * workers never run; after a restart or a promotion, while the workers load;
 * after the extension was re-created) the twins of that worker's partition
 * are read from twin_state, which is exactly their committed state since
 * the worker has processed nothing yet.  twin_state is readable by the
 * extension's owner only, so it is read as that owner (dt_trusted_enter);
 * nothing but the scan's own query and a copy of each row runs meanwhile.
 *
 * A partition's loading can start while a copy runs (a worker restarts,
 * the extension is re-created): the worker then purges the partition and
 * loads it again, and a copy passing by would see some of its twins, or
 * none.  So each worker slot has a load epoch, bumped under the slot's
 * mutex when a rebuild starts purging and again when the partition is
 * loaded.  The rule: a copy takes a partition from shared memory only if
 * the partition was loaded when the copy started and its epoch is the same
 * after the copy as before; otherwise that partition's twins were possibly
 * seen half, and the copy starts over with that partition read from
 * twin_state.  A third pass reads every partition from twin_state, so a
 * query makes at most three passes however often the workers restart.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sys/mman.h>

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/tuplestore.h"

#include "dt_internal.h"

PG_FUNCTION_INFO_V1(digitaltwin_twin_entries);
PG_FUNCTION_INFO_V1(digitaltwin_worker_stats);
PG_FUNCTION_INFO_V1(digitaltwin_database_stats);

/* passes over shared memory before every partition is read from twin_state */
#define DT_LIVE_MAX_PASSES 3

typedef struct DtViewModel
{
	int32		id;				/* hash key */
	char		name[NAMEDATALEN];
	Oid			state_type;
	uint16		state_version;	/* images of another one are not of this type */
	int16		typlen;
	bool		typbyval;
	Oid			owner;			/* conversions run as the model's owner */
	char	   *search_path;
	FmgrInfo	to_jsonb;
	/* this pass's states of the model to convert: a chain of conversions */
	int64		first_conversion;
	int64		last_conversion;
} DtViewModel;

/*
 * The models, with what converting their states takes.  The hash and the
 * to_jsonb() call expression live in the caller's context: the SPI
 * connection's memory is gone once this returns.  The query runs as the
 * caller (digitaltwin.models is readable by everyone) and uses no operator
 * or cast, so the caller's search_path cannot change its meaning.  Only
 * the models the caller may read are in it (rights.c): the twins of the
 * others are skipped like those of a dropped model.
 */
static HTAB *
dt_view_models(void)
{
	MemoryContext cxt = CurrentMemoryContext;
	HASHCTL		ctl;
	HTAB	   *models;
	uint64		i;
	int			ret;
	Oid			user = GetUserId();
	bool		may_read_all = dt_may_all_models(user, DT_RIGHT_READ);

	ctl.keysize = sizeof(int32);
	ctl.entrysize = sizeof(DtViewModel);
	ctl.hcxt = cxt;
	models = hash_create("digitaltwin view models", 16, &ctl,
						 HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);

	SPI_connect();
	ret = SPI_execute(dt_models_have_versions() ?
					  "SELECT id, name, state_type, owner, search_path, state_version FROM digitaltwin.models" :
					  "SELECT id, name, state_type, owner, search_path, 1 FROM digitaltwin.models",
					  true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute failed: %s", SPI_result_code_string(ret));
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		int32		id = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
		char	   *name = TextDatumGetCString(SPI_getbinval(tup, desc, 2, &isnull));
		DtViewModel *m;

		/* the twins of a model the caller may not read are left out */
		if (!may_read_all && !dt_model_allowed(name, user, DT_RIGHT_READ))
			continue;
		m = hash_search(models, &id, HASH_ENTER, NULL);
		strlcpy(m->name, name, sizeof(m->name));
		m->state_type = DatumGetObjectId(SPI_getbinval(tup, desc, 3, &isnull));
		m->owner = DatumGetObjectId(SPI_getbinval(tup, desc, 4, &isnull));
		m->search_path = MemoryContextStrdup(cxt,
											 TextDatumGetCString(SPI_getbinval(tup, desc, 5, &isnull)));
		m->state_version = (uint16) DatumGetInt32(SPI_getbinval(tup, desc, 6, &isnull));
		get_typlenbyval(m->state_type, &m->typlen, &m->typbyval);
		m->first_conversion = m->last_conversion = -1;
		if (m->state_type != JSONBOID)
			dt_to_jsonb_fmgr(&m->to_jsonb, m->state_type, cxt);
	}
	SPI_finish();
	return models;
}

/*
 * Memory of a large collection.
 *
 * A million twins take 40 MB of rows and, with their ids and states, some
 * 90 MB of copies, all freed when the scan ends.  palloc takes blocks that
 * large from malloc, which maps them afresh for each query and unmaps them
 * when they are freed, so each query faulted all of it in again, 4 kB at a
 * time: a quarter of the query's time in a virtual machine, where a first
 * touch costs some 3 ms per MB.  Keeping the memory for the next query
 * would hold it in every backend that ever read the view.  Instead the
 * large pieces of one collection (the rows, the arena's blocks and the
 * conversions) are anonymous memory mapped for them alone and advised to
 * use transparent huge pages: one fault per 2 MB.  (MAP_POPULATE fills
 * 4 kB pages up front, and larger palloc'd blocks are 4 kB pages too:
 * neither measured faster.)
 *
 * A mapping belongs to a memory context, whose reset callback unmaps it:
 * it is freed exactly when palloc'd memory in its place would be, at the
 * end of the scan, at an ERROR, or when a pass starts over.  Below
 * DT_LIVE_MAP_MIN, or if mmap fails, palloc serves as before.  A mapping is
 * not counted by its context (pg_backend_memory_contexts does not show
 * it).
 */
#define DT_LIVE_HUGE_PAGE ((Size) 2 * 1024 * 1024)
#define DT_LIVE_MAP_MIN ((Size) 4 * 1024 * 1024)
#define DT_LIVE_MAP_MAX_BLOCK ((Size) 64 * 1024 * 1024)

typedef struct DtLiveMap
{
	MemoryContextCallback callback;
	char	   *base;			/* NULL once unmapped */
	Size		size;
} DtLiveMap;

static void
dt_live_unmap(void *arg)
{
	DtLiveMap  *map = arg;

	if (map->base != NULL)
		(void) munmap(map->base, map->size);
	map->base = NULL;
}

/*
 * At least size bytes of fresh memory, unmapped when owner is reset or
 * deleted, and its DtLiveMap in *mapp if mapp is not NULL; or NULL if the
 * memory cannot be mapped.
 */
static void *
dt_live_map(MemoryContext owner, Size size, DtLiveMap **mapp)
{
#ifdef MAP_ANONYMOUS
	Size		len = TYPEALIGN(DT_LIVE_HUGE_PAGE, size);
	DtLiveMap  *map;
	char	   *p;
	char	   *start;

	/* without the advice, a mapping of our own is no better than palloc */
	if (!dt_live_view_huge_pages)
		return NULL;
	/* before the mapping: nothing can fail between mmap and the callback */
	map = MemoryContextAlloc(owner, sizeof(DtLiveMap));

	/*
	 * A huge page is aligned on its size: map one more and cut off the ends
	 * outside the aligned range.
	 */
	p = mmap(NULL, len + DT_LIVE_HUGE_PAGE, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
	{
		pfree(map);
		return NULL;
	}
	start = (char *) TYPEALIGN(DT_LIVE_HUGE_PAGE, p);
	if (start > p)
		(void) munmap(p, start - p);
	(void) munmap(start + len, p + DT_LIVE_HUGE_PAGE - start);
	map->base = start;
	map->size = len;
	map->callback.func = dt_live_unmap;
	map->callback.arg = map;
	MemoryContextRegisterResetCallback(owner, &map->callback);

#ifdef MADV_HUGEPAGE
	/*
	 * With huge pages "never", or no room for one: 4 kB pages, as palloc's.
	 * With defrag "madvise" the kernel may compact memory to find a huge
	 * page at the fault: digitaltwin.live_view_huge_pages turns this off.
	 */
	(void) madvise(start, len, MADV_HUGEPAGE);
#endif
	if (mapp != NULL)
		*mapp = map;
	return start;
#else
	return NULL;
#endif
}

/*
 * Move an array of owner's (old, NULL if none yet) to new_size bytes,
 * keeping its first used bytes: mapped if that large, else palloc'd.
 * *mapp is the array's mapping, NULL when it is palloc'd.
 */
static void *
dt_live_resize(MemoryContext owner, void *old, Size used, Size new_size,
			   DtLiveMap **mapp)
{
	DtLiveMap  *old_map = *mapp;
	void	   *p = NULL;

	if (new_size >= DT_LIVE_MAP_MIN)
		p = dt_live_map(owner, new_size, mapp);
	if (p == NULL)
	{
		*mapp = NULL;
		if (old != NULL && old_map == NULL)
			return repalloc_huge(old, new_size);
		p = MemoryContextAllocExtended(owner, new_size, MCXT_ALLOC_HUGE);
	}
	if (used > 0)
		memcpy(p, old, used);
	/* an early unmap leaves the callback nothing to do */
	if (old_map != NULL)
		dt_live_unmap(old_map);
	else if (old != NULL)
		pfree(old);
	return p;
}

/* a state copied under a lock, to be turned into jsonb after */
typedef struct DtLiveConversion
{
	int64		row;
	int64		next;			/* next conversion of the same model, or -1 */
	char	   *image;
	Size		len;
} DtLiveConversion;

typedef struct DtLiveCollect
{
	DtLiveRows *out;
	const bool *needed;
	HTAB	   *models;
	Oid			extension;
	bool		recovery;
	MemoryContext cxt;
	MemoryContext copies;		/* the arena's blocks, reset for each pass */
	char	   *arena;			/* ids and states are carved from blocks */
	Size		arena_left;
	Size		arena_size;		/* the blocks' total size in this pass */
	DtLiveMap  *rows_map;		/* out->rows, if mapped */
	DtLiveMap  *conversions_map;	/* conversions, if mapped */
	DtLiveConversion *conversions;
	int64		nconversions;
	int64		conversions_size;
	DtDatabase *db;				/* this database's entry, NULL if none */
	uint32		incarnation;	/* ... when the copy started */
	int			nparts;
	int			passes;
	/* partitions a former pass saw reloading: read from twin_state */
	bool		durable[DT_MAX_WORKERS];
	/* partitions whose twins come from shared memory in this pass */
	bool		current[DT_MAX_WORKERS];
	uint64		epoch[DT_MAX_WORKERS];	/* their load epochs at its start */
	bool		version_moved;	/* this pass met an image of another version */
	bool		all_current;
	bool		any_current;
} DtLiveCollect;

#define DT_LIVE_ARENA_BLOCK (1024 * 1024)

/*
 * Room for a copied id or state.  A million twins mean two million small
 * copies that all live as long as the scan: carving them out of large
 * blocks saves a chunk header and the rounding up of each, and so a good
 * part of the fresh pages the copy faults in.  MAXALIGNed, as state images
 * need.
 */
static char *
dt_live_alloc(DtLiveCollect *c, Size size)
{
	char	   *p;

	size = MAXALIGN(size);
	if (size > c->arena_left)
	{
		Size		block = Max(size, DT_LIVE_ARENA_BLOCK);
		char	   *p = NULL;

		/*
		 * In a large collection (its rows are mapped, or its copies already
		 * fill a few blocks) the blocks are mapped, each one as large as
		 * the ones before it together, up to DT_LIVE_MAP_MAX_BLOCK: few
		 * mappings, and the untouched end of the last one costs no memory,
		 * only address space.
		 */
		if (c->rows_map != NULL || c->arena_size >= DT_LIVE_MAP_MIN)
		{
			block = Max(size, Min(Max(c->arena_size, DT_LIVE_MAP_MIN),
								  DT_LIVE_MAP_MAX_BLOCK));
			p = dt_live_map(c->copies, block, NULL);
		}
		if (p == NULL)
			p = MemoryContextAllocExtended(c->copies, block, MCXT_ALLOC_HUGE);
		c->arena = p;
		c->arena_left = block;
		c->arena_size += block;
	}
	p = c->arena;
	c->arena += size;
	c->arena_left -= size;
	return p;
}

/* Room for size rows in out; the rows already there are kept. */
static void
dt_live_size_rows(DtLiveCollect *c, int64 size)
{
	DtLiveRows *out = c->out;

	out->rows = dt_live_resize(c->cxt, out->rows,
							   sizeof(DtLiveRow) * out->nrows,
							   sizeof(DtLiveRow) * size, &c->rows_map);
	out->size = size;
}

/* A new row with a twin's fixed-size columns; no id or state yet. */
static inline DtLiveRow *
dt_live_add_row(DtLiveCollect *c, int32 model_id, int64 event_count,
				TimestampTz updated_at)
{
	DtLiveRows *out = c->out;
	DtLiveRow  *row;

	if (unlikely(out->nrows == out->size))
		dt_live_size_rows(c, Max(out->size * 2, 1024));
	row = &out->rows[out->nrows++];
	row->model_id = model_id;
	row->event_count = event_count;
	row->updated_at = updated_at;
	row->twin_id = NULL;
	row->state = NULL;
	return row;
}

/*
 * Add one twin: its fixed-size columns, and copies of its id and state if
 * they are needed.  A state of another type than jsonb is copied as its
 * image now and converted later, once no lock is held.
 */
static void
dt_live_add(DtLiveCollect *c, DtViewModel *m, const char *twin_id, int idlen,
			const char *image, Size len, int64 event_count,
			TimestampTz updated_at)
{
	DtLiveRow  *row = dt_live_add_row(c, m->id, event_count, updated_at);

	if (c->needed[DT_TWIN_COL_TWIN_ID])
	{
		row->twin_id = (text *) dt_live_alloc(c, VARHDRSZ + idlen);
		SET_VARSIZE(row->twin_id, VARHDRSZ + idlen);
		memcpy(VARDATA(row->twin_id), twin_id, idlen);
	}
	if (c->needed[DT_TWIN_COL_STATE])
	{
		char	   *copy = dt_live_alloc(c, len);

		memcpy(copy, image, len);
		if (m->state_type == JSONBOID)
			row->state = (Jsonb *) copy;
		else
		{
			DtLiveConversion *conv;
			int64		n;

			if (c->nconversions == c->conversions_size)
			{
				c->conversions =
					dt_live_resize(c->cxt, c->conversions,
								   sizeof(DtLiveConversion) * c->nconversions,
								   sizeof(DtLiveConversion) * c->conversions_size * 2,
								   &c->conversions_map);
				c->conversions_size *= 2;
			}
			n = c->nconversions++;
			conv = &c->conversions[n];
			conv->row = c->out->nrows - 1;
			conv->next = -1;
			conv->image = copy;
			conv->len = len;
			if (m->last_conversion < 0)
				m->first_conversion = n;
			else
				c->conversions[m->last_conversion].next = n;
			m->last_conversion = n;
		}
	}
}

/*
 * A row of twin_state.  This runs as the extension's owner (the scan's
 * caller switched): it only copies, into the collection's memory, never
 * calls anything a user defined.
 */
static void
dt_live_add_durable(void *arg, int32 model_id, const char *twin_id, int idlen,
					const char *image, Size len, int64 event_count,
					TimestampTz updated_at)
{
	DtLiveCollect *c = arg;
	DtViewModel *m;
	MemoryContext old;

	if (c->current[dt_partition_of(twin_id, idlen, c->nparts)])
		return;
	m = hash_search(c->models, &model_id, HASH_FIND, NULL);
	if (m == NULL)
		return;
	/* in the caller's context, to outlive the scan's SPI connection */
	old = MemoryContextSwitchTo(c->cxt);
	dt_live_add(c, m, twin_id, idlen, image, len, event_count, updated_at);
	MemoryContextSwitchTo(old);
}

/*
 * The twins of the partitions not current in this pass (partition < 0: of
 * every partition), from twin_state, read as the owner of the extension's
 * tables: readers have no rights on twin_state itself.
 */
static void
dt_live_add_durables(DtLiveCollect *c, int partition)
{
	DtTrustedScope scope;

	dt_trusted_enter(&scope);
	dt_durable_scan(partition, c->nparts, 0, dt_live_add_durable, c);
	dt_trusted_leave(&scope);
}

/* Twins of this database in shared memory, from its workers' slots. */
int64
dt_view_twin_count(void)
{
	DtDatabase *db = dt_database_current();
	int64		twins = 0;
	int			i;

	if (db == NULL)
		return 0;
	for (i = 0; i < dt_shared->nworkers; i++)
	{
		SpinLockAcquire(&db->slots[i].mutex);
		twins += db->slots[i].twins;
		SpinLockRelease(&db->slots[i].mutex);
	}
	return twins;
}

/* Set up a copy into out, sized for size_hint rows. */
static void
dt_live_start(DtLiveCollect *c, DtLiveRows *out, const bool *needed,
			  int64 size_hint)
{
	dt_require_preload();
	(void) dt_models_relid();	/* clear error if not installed */

	memset(c, 0, sizeof(*c));
	c->db = dt_database_current();
	if (c->db != NULL)
	{
		c->incarnation = c->db->incarnation;
		dt_attach_store();
	}
	c->extension = dt_extension_oid();
	c->recovery = RecoveryInProgress();
	c->out = out;
	c->needed = needed;
	c->models = dt_view_models();
	c->cxt = CurrentMemoryContext;
	c->copies = AllocSetContextCreate(c->cxt, "digitaltwin live copies",
									  ALLOCSET_DEFAULT_SIZES);
	c->conversions_size = 64;
	c->conversions = palloc(sizeof(DtLiveConversion) * c->conversions_size);
	c->nparts = Max(dt_shared->nworkers, 1);
	out->nrows = 0;
	out->rows = NULL;
	dt_live_size_rows(c, size_hint);
}

/*
 * Start a pass: no rows yet.  Find the partitions whose twins come from
 * shared memory, with their load epochs.  Partitions whose worker has not
 * loaded them for this extension come from twin_state; their shared-memory
 * entries, if any, are stale (after DROP and CREATE EXTENSION, model ids
 * start over) and are skipped.  So are partitions an earlier pass saw
 * reloading.
 */
static void
dt_live_begin_pass(DtLiveCollect *c)
{
	HASH_SEQ_STATUS status;
	DtViewModel *m;
	int			i;

	c->out->nrows = 0;
	c->nconversions = 0;
	c->version_moved = false;
	MemoryContextReset(c->copies);
	c->arena = NULL;
	c->arena_left = 0;
	c->arena_size = 0;
	hash_seq_init(&status, c->models);
	while ((m = hash_seq_search(&status)) != NULL)
		m->first_conversion = m->last_conversion = -1;

	/*
	 * No entry, or the entry went to another database since the copy
	 * started: nothing comes from shared memory (a purge bumps every load
	 * epoch, so a pass that copied another database's twins is not held).
	 */
	if (c->db != NULL &&
		(dt_database_current() != c->db || c->db->incarnation != c->incarnation))
		c->db = NULL;
	c->all_current = true;
	c->any_current = false;
	for (i = 0; i < c->nparts; i++)
	{
		DtWorkerSlot *slot;

		if (c->db == NULL)
		{
			c->current[i] = false;
			c->all_current = false;
			continue;
		}
		slot = &c->db->slots[i];
		SpinLockAcquire(&slot->mutex);
		c->current[i] = (slot->store_extension == c->extension);
		c->epoch[i] = slot->load_epoch;
		SpinLockRelease(&slot->mutex);
		c->current[i] &= !c->recovery && !c->durable[i];
		c->all_current &= c->current[i];
		c->any_current |= c->current[i];
	}
}

/*
 * An image in shared memory made under another state_version of its model
 * than the one this snapshot sees (alter_model() migrated the states, and
 * the worker has not reloaded them yet, or this snapshot is older than the
 * reload): it may not even be of the type the reader would decode it as.
 * Its partition is read from twin_state in the next pass, where the
 * snapshot finds the state of the version it sees.
 */
static bool
dt_live_version_differs(DtLiveCollect *c, DtViewModel *m, DtTwinEntry *entry)
{
	if (entry->state_version == m->state_version)
		return false;
	c->durable[dt_partition_of(dt_entry_twin_id(entry), entry->id_len, c->nparts)] = true;
	c->version_moved = true;
	return true;
}

/*
 * End a pass: true if every partition it copied from shared memory
 * (partition < 0) or the one it did stayed loaded throughout, that is kept
 * its load epoch.  Otherwise the partitions that moved are read from
 * twin_state in the next pass, and every partition in the last one.
 */
static bool
dt_live_pass_held(DtLiveCollect *c, int partition)
{
	bool		held = !c->version_moved;
	int			i;

	for (i = 0; i < c->nparts; i++)
	{
		DtWorkerSlot *slot;
		uint64		epoch;

		if (!c->current[i] || (partition >= 0 && i != partition))
			continue;
		slot = &c->db->slots[i];
		SpinLockAcquire(&slot->mutex);
		epoch = slot->load_epoch;
		SpinLockRelease(&slot->mutex);
		if (epoch != c->epoch[i])
		{
			c->durable[i] = true;
			held = false;
		}
	}
	/* the next pass is the last one: it reads nothing from shared memory */
	if (!held && ++c->passes == DT_LIVE_MAX_PASSES - 1)
	{
		for (i = 0; i < c->nparts; i++)
			c->durable[i] = true;
	}
	return held;
}

/*
 * Convert a model's states copied as images.  The conversion can run code
 * of the model's author: a cast of the type (or of a type inside it) to
 * json, an output function.  It must not run with the rights of whoever
 * reads the view (a superuser, say): the caller runs it as a model call
 * runs (dt_become_model_owner).
 */
static void
dt_live_convert_states(DtLiveCollect *c, DtViewModel *m)
{
	int64		i;

	for (i = m->first_conversion; i >= 0; i = c->conversions[i].next)
	{
		DtLiveConversion *conv = &c->conversions[i];

		CHECK_FOR_INTERRUPTS();
		c->out->rows[conv->row].state = DatumGetJsonbP(
			FunctionCall1(&m->to_jsonb,
						  dt_state_image_read(conv->image, conv->len,
											  m->typlen, m->typbyval)));
	}
}

/*
 * Convert one model's states copied as images, in a subtransaction: if a
 * conversion fails, the model's twins show a NULL state and a WARNING says
 * why; the query goes on.  A cancel or shutdown is not the model's fault:
 * it is raised again.
 */
static void
dt_live_convert_model(DtLiveCollect *c, DtViewModel *m)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	Oid			save_userid;
	int			save_sec_context;
	int			guc_level;
	int64		i;

	/* no subtransaction can start in parallel mode: convert unprotected */
	if (IsInParallelMode())
	{
		guc_level = dt_become_model_owner(m->owner, m->search_path,
										  &save_userid, &save_sec_context);
		dt_live_convert_states(c, m);
		dt_leave_model_owner(save_userid, save_sec_context, guc_level);
		return;
	}

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcxt);
	PG_TRY();
	{
		/* an ERROR: the subtransaction's abort restores both */
		guc_level = dt_become_model_owner(m->owner, m->search_path,
										  &save_userid, &save_sec_context);
		dt_live_convert_states(c, m);
		dt_leave_model_owner(save_userid, save_sec_context, guc_level);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;

		if (ERRCODE_TO_CATEGORY(edata->sqlerrcode) ==
			ERRCODE_OPERATOR_INTERVENTION)
			ReThrowError(edata);

		for (i = m->first_conversion; i >= 0; i = c->conversions[i].next)
			c->out->rows[c->conversions[i].row].state = NULL;
		ereport(WARNING,
				(errcode(edata->sqlerrcode),
				 errmsg("could not show the states of model \"%s\" as jsonb: %s",
						m->name, edata->message),
				 errdetail("The twins of model \"%s\" are shown with a NULL state.",
						   m->name),
				 errhint("Check the model's state type %s.",
						 format_type_be(m->state_type))));
		FreeErrorData(edata);
	}
	PG_END_TRY();
}

/* Convert the states copied as images, now that no lock is held. */
static void
dt_live_finish(DtLiveCollect *c)
{
	HASH_SEQ_STATUS status;
	DtViewModel *m;

	if (c->nconversions == 0)
		return;
	hash_seq_init(&status, c->models);
	while ((m = hash_seq_search(&status)) != NULL)
	{
		if (m->first_conversion >= 0)
			dt_live_convert_model(c, m);
	}
}

/*
 * Copy every live twin into out, in the current memory context.  Only the
 * columns needed[] are copied, the others are left NULL: a query that does
 * not use a twin's id or state (count(*), an average of event_count) reads
 * only its entry's header, one cache line per twin.
 *
 * Like pg_buffercache, this copies first and returns rows after, so that
 * no lock is held while the executor runs; the copy takes about 40 bytes
 * per twin, plus the ids and states when they are used.  The loop over the
 * shared table does nothing but copy: entries are scattered over the DSA
 * area, each one a cache miss; the scan asks for entries a few slots ahead
 * (twin_table.c) and a short loop body lets the processor have several of
 * those misses in flight (a million twins: about 0.1 s for the loop alone
 * against 0.4 s when it formed a tuple per twin).
 */
void
dt_view_collect_twins(DtLiveRows *out, const bool *needed)
{
	DtLiveCollect c;
	DtTableScan scan;
	DtTwinEntry *entry;
	DtViewModel *m;

	dt_live_start(&c, out, needed, dt_view_twin_count() + 1024);
	do
	{
		dt_live_begin_pass(&c);
		if (!c.all_current)
			dt_live_add_durables(&c, -1);
		if (!c.any_current)
			break;

		m = NULL;
		dt_store_scan_begin(&scan);
		while ((entry = dt_table_scan_next(&scan)) != NULL)
		{
			if (!c.all_current &&
				!c.current[dt_partition_of(dt_entry_twin_id(entry),
										   entry->id_len, c.nparts)])
				continue;
			if (m == NULL || m->id != entry->model_id)
				m = hash_search(c.models, &entry->model_id, HASH_FIND, NULL);
			/* a model dropped after the workers last looked */
			if (m == NULL)
				continue;
			if (needed[DT_TWIN_COL_STATE] && dt_live_version_differs(&c, m, entry))
				continue;
			if (!needed[DT_TWIN_COL_TWIN_ID] && !needed[DT_TWIN_COL_STATE])
			{
				(void) dt_live_add_row(&c, m->id, entry->event_count,
									   entry->updated_at);
				continue;
			}
			dt_live_add(&c, m,
						needed[DT_TWIN_COL_TWIN_ID] ? dt_entry_twin_id(entry) : NULL,
						entry->id_len,
						needed[DT_TWIN_COL_STATE] ? DT_ENTRY_STATE(entry) : NULL,
						entry->state_len, entry->event_count, entry->updated_at);
		}
	} while (!dt_live_pass_held(&c, -1));
	dt_live_finish(&c);
}

/*
 * Copy the twins with one id, of every model, into out: one hash lookup per
 * model instead of a pass over all twins.  The caller's quals are checked
 * on the rows as for a full copy.  If the id's partition is not loaded in
 * shared memory yet (a rare case: right after a start, or on a standby),
 * the twins of that partition come from twin_state, and the quals pick.
 */
void
dt_view_lookup_twin(DtLiveRows *out, const bool *needed, const char *twin_id,
					int idlen)
{
	DtLiveCollect c;
	HASH_SEQ_STATUS status;
	DtViewModel *m;
	int			partition;

	dt_live_start(&c, out, needed, 16);
	if (idlen > DT_TWIN_ID_MAXLEN)
		return;					/* no such twin can exist */
	partition = dt_partition_of(twin_id, idlen, c.nparts);
	do
	{
		dt_live_begin_pass(&c);
		if (!c.current[partition])
		{
			dt_live_add_durables(&c, partition);
			break;
		}
		hash_seq_init(&status, c.models);
		while ((m = hash_seq_search(&status)) != NULL)
		{
			DtTwinEntry *entry = dt_store_find(m->id, twin_id, idlen);

			if (entry == NULL)
				continue;
			if (!dt_live_version_differs(&c, m, entry))
				dt_live_add(&c, m, twin_id, idlen, DT_ENTRY_STATE(entry),
							entry->state_len, entry->event_count,
							entry->updated_at);
			dt_store_release(entry);
		}
	} while (!dt_live_pass_held(&c, partition));
	dt_live_finish(&c);
}

/*
 * twin_entries(): every column of every live twin.  Since version 1.2 the
 * view reads the foreign table digitaltwin.live_twins instead (live_fdw.c),
 * which copies only the columns a query uses.
 */
Datum
digitaltwin_twin_entries(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	bool		needed[DT_TWIN_NCOLS];
	DtLiveRows	rows;
	int64		i;

	dt_require_preload();
	InitMaterializedSRF(fcinfo, 0);
	for (i = 0; i < DT_TWIN_NCOLS; i++)
		needed[i] = true;
	dt_view_collect_twins(&rows, needed);
	for (i = 0; i < rows.nrows; i++)
	{
		Datum		values[DT_TWIN_NCOLS];
		bool		nulls[DT_TWIN_NCOLS];

		dt_view_row_values(&rows.rows[i], needed, values, nulls);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/* A row's columns as datums; columns not needed are NULL. */
void
dt_view_row_values(const DtLiveRow *row, const bool *needed,
				   Datum *values, bool *nulls)
{
	values[DT_TWIN_COL_MODEL_ID] = Int32GetDatum(row->model_id);
	values[DT_TWIN_COL_TWIN_ID] = PointerGetDatum(row->twin_id);
	values[DT_TWIN_COL_STATE] = PointerGetDatum(row->state);
	values[DT_TWIN_COL_EVENT_COUNT] = Int64GetDatum(row->event_count);
	values[DT_TWIN_COL_UPDATED_AT] = TimestampTzGetDatum(row->updated_at);
	nulls[DT_TWIN_COL_MODEL_ID] = !needed[DT_TWIN_COL_MODEL_ID];
	nulls[DT_TWIN_COL_TWIN_ID] = (row->twin_id == NULL);
	nulls[DT_TWIN_COL_STATE] = (row->state == NULL);
	nulls[DT_TWIN_COL_EVENT_COUNT] = !needed[DT_TWIN_COL_EVENT_COUNT];
	nulls[DT_TWIN_COL_UPDATED_AT] = !needed[DT_TWIN_COL_UPDATED_AT];
}

Datum
digitaltwin_worker_stats(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	TimestampTz now = GetCurrentTimestamp();
	int			i;

	DtDatabase *db;

	dt_require_preload();
	InitMaterializedSRF(fcinfo, 0);
	db = dt_database_current();

	for (i = 0; db != NULL && i < dt_shared->nworkers; i++)
	{
		DtWorkerSlot *slot = &db->slots[i];
		Datum		values[11];
		bool		nulls[11];
		pid_t		pid;
		double		rate;
		int64		twins;
		int64		bytes;
		TimestampTz last_batch_at;
		TimestampTz window_start;
		char		last_error[sizeof(slot->last_error)];

		SpinLockAcquire(&slot->mutex);
		pid = slot->pid;
		rate = slot->events_per_second;
		twins = slot->twins;
		bytes = slot->memory_bytes;
		last_batch_at = slot->last_batch_at;
		window_start = slot->window_start;
		memcpy(last_error, slot->last_error, sizeof(last_error));
		SpinLockRelease(&slot->mutex);

		/* a rate measured long ago says nothing about now */
		if (window_start == 0 || TimestampDifferenceExceeds(window_start, now, 5000))
			rate = 0;

		memset(nulls, 0, sizeof(nulls));
		values[0] = Int32GetDatum(i);
		values[1] = Int32GetDatum(pid);
		nulls[1] = (pid == 0);
		values[2] = Int64GetDatum(pg_atomic_read_u64(&slot->events_processed));
		values[3] = Float8GetDatum(rate);
		values[4] = Int64GetDatum(pg_atomic_read_u64(&slot->dead_letters));
		values[5] = Int64GetDatum(pg_atomic_read_u64(&slot->alerts));
		values[6] = Int64GetDatum(pg_atomic_read_u64(&slot->batches));
		values[7] = Int64GetDatum(twins);
		values[8] = Int64GetDatum(bytes);
		values[9] = TimestampTzGetDatum(last_batch_at);
		nulls[9] = (last_batch_at == 0);
		values[10] = CStringGetTextDatum(last_error);
		nulls[10] = (last_error[0] == '\0');
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/* What digitaltwin.stats says of a database's state. */
static char *
dt_database_status(const DtDatabase *db)
{
	switch (db->state)
	{
		case DT_DB_STARTING:
			return pstrdup("starting");
		case DT_DB_SERVED:
			return pstrdup(db->holds > 0 ? "held" : "served");
		case DT_DB_REFUSED:
			return psprintf("not served: %s", db->reason);
		case DT_DB_FREE:
			break;
	}
	return pstrdup("free");
}

/*
 * database_stats(): every database that has an entry (served, starting or
 * refused), with its share of the shared memory.  Names and states come
 * from shared memory, so a reader in any database sees all of them, as
 * pg_database shows every database to everyone.
 */
Datum
digitaltwin_database_stats(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	bool		mine = false;
	int			i;

	dt_require_preload();
	InitMaterializedSRF(fcinfo, 0);

	for (i = 0; i < dt_shared->ndatabases; i++)
	{
		DtDatabase *db = dt_database_entry(i);
		Datum		values[8];
		bool		nulls[8];
		NameData	name;
		char	   *status;
		int			running = 0;
		int64		twins = 0;
		int64		bytes = 0;
		int64		processed = 0;
		int64		dead = 0;
		int64		alerts = 0;
		int			p;

		LWLockAcquire(&dt_shared->lock, LW_SHARED);
		if (db->state == DT_DB_FREE)
		{
			LWLockRelease(&dt_shared->lock);
			continue;
		}
		namestrcpy(&name, db->name);
		status = dt_database_status(db);
		mine |= (db->dboid == MyDatabaseId);
		LWLockRelease(&dt_shared->lock);

		for (p = 0; p < dt_shared->nworkers; p++)
		{
			DtWorkerSlot *slot = &db->slots[p];

			SpinLockAcquire(&slot->mutex);
			running += (slot->pid != 0);
			twins += slot->twins;
			bytes += slot->memory_bytes;
			SpinLockRelease(&slot->mutex);
			processed += pg_atomic_read_u64(&slot->events_processed);
			dead += pg_atomic_read_u64(&slot->dead_letters);
			alerts += pg_atomic_read_u64(&slot->alerts);
		}

		memset(nulls, 0, sizeof(nulls));
		values[0] = NameGetDatum(&name);
		values[1] = CStringGetTextDatum(status);
		values[2] = Int32GetDatum(running);
		values[3] = Int64GetDatum(processed);
		values[4] = Int64GetDatum(dead);
		values[5] = Int64GetDatum(alerts);
		values[6] = Int64GetDatum(twins);
		values[7] = Int64GetDatum(bytes);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}

	/* this database without an entry: say why */
	if (!mine)
	{
		Datum		values[8];
		bool		nulls[8];
		NameData	name;
		char	   *dbname = get_database_name(MyDatabaseId);

		memset(nulls, 0, sizeof(nulls));
		namestrcpy(&name, dbname ? dbname : "");
		values[0] = NameGetDatum(&name);
		values[1] = CStringGetTextDatum(dt_database_status_without_entry());
		values[2] = Int32GetDatum(0);
		for (i = 3; i < 8; i++)
			values[i] = Int64GetDatum(0);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
