/*-------------------------------------------------------------------------
 *
 * dt_internal.h
 *	  Declarations shared by the source files of digitaltwin.
 *
 * One file per concern, from the bottom up (a file calls only the ones
 * above it in this list, and util.c none):
 *	  util.c	 helpers: preload check, kept plans, the trusted scope
 *	  guc.c		 configuration parameters
 *	  twin_table.c the shared table of twins: stripes of open addressing in DSA
 *	  shmem.c	 shared memory: database entries, worker slots, the twins' store
 *	  databases.c which databases are served: entries, refusals, holds
 *	  reload.c	 twin_state written by others: the workers reload
 *	  model.c	 model registry, caches of models, calling model functions
 *	  rights.c	 per-model rights: grant_model(), revoke_model(), checks
 *	  cluster.c	 a cluster node's shard guard: the twins it owns
 *	  cluster_ingest.c a coordinator's COPY path, batched per node
 *	  protect.c	 what keeps a model runnable: owner, state type, chain depth
 *	  twin_views.c typed views: create_twin_view(), dropped with their model
 *	  rules.c	 rules-based models: create_rule_model(), alter_rule_model()
 *	  queue.c	 event validation trigger, commit wake-up, batch fetch, wait_idle
 *	  stage.c	 worker-local staging of twin states within a batch
 *	  durable.c	 reading twin_state: the workers' load, the readers' scan
 *	  lifecycle.c versions (alter_model), pause and resume, logging
 *				 switches, drop_model()
 *	  alerts.c	 alert(), staged alerts, dead letters
 *	  outbox.c	 send_to_source(), staged commands to the data sources
 *	  messages.c send(): events, and messages between twins staged like alerts
 *	  context.c	 current_event(), and what a model's sends inherit from it
 *	  timers.c	 durable timers: set_timer(), cancel_timer(), firing
 *	  history.c	 what a batch writes to the event log and the state history
 *	  model_stats.c statistics per model: counters written with each batch,
 *				 progress of the batch in flight, reset_stats()
 *	  partitions.c the time partitions of the event log and history
 *	  as_of.c	 twins_as_of(): the twins at a past time, from the history
 *	  rehearsal.c rehearse(): a candidate version over the event log, sandboxed
 *	  views.c	 set-returning functions behind the live views
 *	  live_fdw.c foreign data wrapper behind the live view digitaltwin.twins
 *	  rebuild.c	 partitions rebuilt from twin_state; the load at start
 *	  worker.c	 background worker loop and batch transaction
 *	  launcher.c the launcher: workers of every database that has the extension
 *	  digitaltwin.c  module load: parameters, shared memory hooks, launcher
 *
 * Copyright (c) 2026, digitaltwin developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef DT_INTERNAL_H
#define DT_INTERNAL_H

#include "postgres.h"

#include "access/genam.h"
#include "digitaltwin.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/dshash.h"
#include "port/atomics.h"
#include "storage/condition_variable.h"
#include "storage/itemptr.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/spin.h"
#include "utils/dsa.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

#define DT_MAX_WORKERS 64
#define DT_MAX_STOPPED 8		/* stopped events a worker slot remembers */
#define DT_QUEUE_PARTITIONS 3
#define DT_GENERATION_UNKNOWN PG_UINT64_MAX
#define DT_NOTIFY_CHANNEL "digitaltwin_alerts"

/*
 * Array data one statement of a batch takes at most (states, alerts): well
 * under the 1 GB a value can have, whatever a batch holds.
 */
#define DT_FLUSH_BYTES (64 * 1024 * 1024)

/* guc.c */
extern char *dt_databases;
extern int	dt_workers;
extern int	dt_max_databases;
extern int	dt_max_memory_per_database_mb;
extern int	dt_max_memory_mb;
extern int	dt_batch_size;
extern int	dt_poll_interval_ms;
extern int	dt_batch_delay_ms;
extern int	dt_model_timeout_ms;
extern int	dt_max_payload_kb;
extern int	dt_max_state_kb;
extern int	dt_queue_rotation_ms;
extern int	dt_log_partition_s;
extern int	dt_alert_retention_s;
extern int	dt_dead_letter_retention_s;
extern int	dt_max_twins_per_model;
extern bool dt_allow_superuser_models;
extern bool dt_live_view_huge_pages;
extern int	dt_max_message_depth;
extern int	dt_outbox_retention_s;
extern void dt_define_gucs(void);
extern bool dt_database_listed(const char *dbname);

/* ----------------------------------------------------------------
 * util.c
 * ----------------------------------------------------------------
 */
extern bool dt_preloaded;
extern bool dt_is_worker;		/* this process is a digitaltwin worker */
extern void dt_require_preload(void);
extern char *dt_text_arg(FunctionCallInfo fcinfo, int n, const char *what);
extern void dt_forbid_in_model(const char *function);
struct DtCurrentEvent;
extern struct DtCurrentEvent *dt_require_model_call(const char *function,
													const char *detail,
													const char *hint);
extern bool dt_table_exists(const char *relname);
extern void dt_require_table(const char *relname, const char *version,
							 const char *function);
extern int	dt_timestamp_plus_interval(TimestampTz t, const Interval *iv,
									   TimestampTz *result);
extern bool dt_run_guarded(void (*fn) (void *arg), void *arg, const char *lock_timeout,
						   int elevel, const char *failure);
extern void dt_to_jsonb_fmgr(FmgrInfo *flinfo, Oid type, MemoryContext cxt);
extern Datum dt_make_array(Datum *values, bool *nulls, int n, Oid type);
extern SPIPlanPtr dt_spi_prepare_kept(const char *sql, int nargs, Oid *argtypes);
extern void dt_spi_read_latest(const char *sql);
typedef void (*dt_row_fn) (HeapTuple tuple, TupleDesc desc, void *arg);

/* notifications a batch sends after its commit (alerts, outbox) */
typedef struct DtAnnouncements
{
	MemoryContext cxt;
	char	  **payloads;
	int			n;
	int			size;
} DtAnnouncements;

extern void dt_announce_add(DtAnnouncements *a, const char *payload);
extern void dt_announce_send(DtAnnouncements *a, const char *channel);
extern void dt_announce_forget(DtAnnouncements *a);
extern void dt_spi_cursor_each(Portal portal, dt_row_fn fn, void *arg);

/* rows of the extension's tables by primary key, through the table AM */
typedef struct DtKeyScan
{
	Relation	rel;
	Relation	index;			/* the primary key */
	int			nkeys;			/* its columns */
	IndexScanDesc scan;
	TupleTableSlot *slot;		/* the row found */
	BlockNumber nblocks;		/* of the table, once a place was tried */
} DtKeyScan;

extern void dt_key_scan_open(DtKeyScan *ks, Oid relid, LOCKMODE lockmode,
							 Snapshot snapshot);
extern bool dt_key_scan_fetch(DtKeyScan *ks, ScanKey keys);
extern bool dt_key_scan_fetch_at(DtKeyScan *ks, ItemPointer tid, ScanKey keys);
extern void dt_key_scan_close(DtKeyScan *ks);

typedef struct DtRowUpdater
{
	DtKeyScan	find;			/* find.slot: the row to update */
	Snapshot	snapshot;
	EState	   *estate;
	ResultRelInfo *rri;
	TupleTableSlot *newslot;	/* its new version */
} DtRowUpdater;

extern bool dt_columns_are(TupleDesc desc, const Oid *types, int ntypes);
/* a tuple of a pinned heap page, by offset (false: no tuple there) */
extern bool dt_page_tuple(Relation rel, Buffer buffer, OffsetNumber off,
						  HeapTuple tuple);

extern void dt_row_updater_open(DtRowUpdater *u, Oid relid, Snapshot snapshot);
extern bool dt_row_updater_find(DtRowUpdater *u, ScanKey keys);
extern bool dt_row_updater_find_at(DtRowUpdater *u, ItemPointer tid, ScanKey keys);
extern bool dt_row_updater_write(DtRowUpdater *u);
extern void dt_row_updater_close(DtRowUpdater *u);

/* the search_path of every statement the extension runs with other rights */
#define DT_TRUSTED_SEARCH_PATH "pg_catalog, pg_temp"
extern int	dt_pin_search_path(void);
extern int	dt_become_model_owner(Oid owner, const char *search_path,
								  Oid *save_userid, int *save_sec_context);
extern void dt_leave_model_owner(Oid save_userid, int save_sec_context, int level);

/*
 * SPI as the owner of the extension's tables, search_path pinned (registry,
 * model-name check, queue generation and sequence, the live view's
 * fallback, the DROP ROLE and REASSIGN OWNED checks).
 */
typedef struct DtTrustedScope
{
	Oid			save_userid;
	int			save_sec_context;
	int			guc_level;
} DtTrustedScope;

extern void dt_trusted_enter(DtTrustedScope *scope);
extern void dt_trusted_leave(DtTrustedScope *scope);

/* ----------------------------------------------------------------
 * shmem.c
 * ----------------------------------------------------------------
 */

/*
 * A twin's name: model and twin id.  twin_id is zero-padded so that the key
 * can be hashed and compared as plain bytes in backend-local hash tables.
 */
typedef struct DtTwinKey
{
	int32		model_id;
	char		twin_id[DT_TWIN_ID_MAXLEN + 1];
} DtTwinKey;

/*
 * A twin in shared memory (twin_table.c): one DSA chunk holding this
 * header (27 bytes: offsetof(DtTwinEntry, data)), the twin id (id_len
 * bytes, not NUL-terminated) and the state image (state_len bytes, not
 * aligned: readers copy it) right after it.  A linked entry is written only
 * under its stripe's exclusive lock; a state of another length is a new
 * chunk that replaces the entry, so readers holding the stripe's lock
 * always see one whole state.
 */
typedef struct DtTwinEntry
{
	int64		event_count;
	TimestampTz updated_at;
	int32		model_id;
	uint32		state_len;
	uint16		state_version;	/* its model's state_version, modulo 2^16,
								 * when the image was made (lifecycle.c) */
	uint8		id_len;
	char		data[FLEXIBLE_ARRAY_MEMBER];	/* id, then state */
} DtTwinEntry;

#define DT_ENTRY_STATE(entry) ((entry)->data + (entry)->id_len)

StaticAssertDecl(offsetof(DtTwinEntry, data) == 27,
				 "the overhead per twin in the docs counts a 27-byte header");
StaticAssertDecl(DT_TWIN_ID_MAXLEN <= PG_UINT8_MAX,
				 "a twin id's length is kept in one byte");

/*
 * The table's stripes: one lock and one array of slots each.  A scan holds
 * one stripe's lock while it copies the stripe, and a worker publishing a
 * batch meets it about once per DT_TABLE_STRIPES twins, waiting half a
 * stripe's copy: the wait per batch falls with the square of the number
 * of stripes (1024: 1,000 twins each for a million, under a millisecond).
 */
#define DT_TABLE_STRIPES 1024

typedef struct DtTableStripe
{
	LWLock		lock;
	uint32		nslots;			/* 0, or a power of two */
	uint32		used;			/* slots holding an entry */
	uint32		tombstones;		/* slots of deleted entries */
	uint32		reserved;		/* slots promised to batches in flight */
	dsa_pointer slots;			/* nslots dsa_pointers */
} DtTableStripe;

/* a twin as the table looks it up (dt_table_key) */
typedef struct DtTableKey
{
	int32		model_id;
	int			idlen;
	const char *id;
	uint32		hash;
} DtTableKey;

/*
 * A stripe per 64 bytes (a cache line of the usual processors; not
 * PG_CACHE_LINE_SIZE, 128, which would double the table's 64 kB per
 * database entry): processes writing different stripes do not share a
 * line.  The database entries are placed at multiples of 64 (shmem.c).
 */
#define DT_STRIPE_SIZE 64

typedef union DtTableStripePadded
{
	DtTableStripe stripe;
	char		pad[DT_STRIPE_SIZE];
}
#ifdef pg_attribute_aligned
			pg_attribute_aligned(DT_STRIPE_SIZE)
#endif
DtTableStripePadded;

StaticAssertDecl(sizeof(DtTableStripe) <= DT_STRIPE_SIZE, "a stripe fits its line");

typedef struct DtTwinTable
{
	DtTableStripePadded stripes[DT_TABLE_STRIPES];
} DtTwinTable;

typedef struct DtTableScan
{
	dsa_area   *area;
	DtTwinTable *table;
	bool		exclusive;
	int			stripe;			/* locked while < DT_TABLE_STRIPES */
	uint32		pos;			/* next slot to look at */
	uint32		nslots;
	dsa_pointer *slots;
} DtTableScan;

typedef struct DtWorkerSlot
{
	slock_t		mutex;			/* protects the non-atomic fields */
	pid_t		pid;
	bool		extension_gone; /* it exited: the extension was dropped */
	Latch	   *latch;
	Oid			store_extension;	/* extension whose twins the partition holds */
	uint64		load_epoch;		/* bumped when a rebuild starts purging the
								 * partition and again once it is loaded: a
								 * reader that saw one value before and after
								 * its copy saw the partition whole (views.c) */
	/* for wait_idle(): see dt_worker_finish_batch() */
	uint64		fetches;		/* fetches started */
	uint64		covered_fetch;	/* the last fetch whose batch was published */
	int64		covered_through;	/* all its visible events <= this consumed */
	uint64		message_batches;	/* published batches that sent messages */
	int64		twins;
	int64		memory_bytes;
	TimestampTz last_batch_at;
	TimestampTz window_start;
	int64		window_events;
	double		events_per_second;
	char		last_error[256];
	/* events whose model ignored the timeout, until dead-lettered */
	int64		stopped_events[DT_MAX_STOPPED];
	Oid			stopped_extension;	/* the extension they were queued in */
	pg_atomic_uint64 events_processed;
	pg_atomic_uint64 dead_letters;
	pg_atomic_uint64 alerts;
	pg_atomic_uint64 batches;
} DtWorkerSlot;

/*
 * A database's part of shared memory: its workers' slots and its twins.
 * Entries are assigned to databases by the launcher (launcher.c) and the
 * backends that ask for one (databases.c); a database's backends and
 * workers only ever touch their own entry, so no database sees another's
 * twins.  The fields before 'counts_handle' change only under
 * DtShared.lock; 'incarnation' changes at each assignment, so that a
 * backend can tell that the entry it remembered was given to another
 * database (or to its own again, after DROP and CREATE EXTENSION).
 */
typedef enum DtDbState
{
	DT_DB_FREE = 0,				/* not assigned */
	DT_DB_STARTING,				/* assigned; the launcher is starting its workers */
	DT_DB_SERVED,				/* its workers run (or are being restarted) */
	DT_DB_REFUSED				/* has the extension but is not served: 'reason' */
} DtDbState;

/*
 * The load at start (rebuild.c): the first worker of a database to rebuild
 * loads every partition, the others take theirs from it.
 */
typedef enum DtStartLoad
{
	DT_START_LOAD_OPEN = 0,		/* no worker has rebuilt yet */
	DT_START_LOAD_LOADING,		/* a worker loads every partition */
	DT_START_LOAD_DONE,			/* loaded: start_loaded may be taken */
	DT_START_LOAD_CLOSED		/* the loader failed: each loads its own */
} DtStartLoad;

typedef struct DtDatabase
{
	Oid			dboid;
	uint32		incarnation;
	DtDbState	state;
	char		name[NAMEDATALEN];
	int			refusal_code;	/* SQLSTATE of the refusal (DT_DB_REFUSED) */
	char		reason[256];
	uint64		serve_requests; /* CREATE EXTENSION asked the launcher to serve it */
	uint64		serve_answered; /* ... up to this request */
	TransactionId creating_xid; /* the transaction of the last such request */
	int			holds;			/* DROP/ALTER/CREATE DATABASE needing it alone */
	TransactionId dropping_xid; /* the last DROP EXTENSION's transaction */
	bool		extension_dropped;	/* ... which committed */
	bool		creation_aborted;	/* creating_xid rolled back */
	pg_atomic_uint64 reload_generation; /* twin_state changed by others ... */
	pg_atomic_uint32 reload_pending;	/* ... or such a change is committing */
	/* its store: see shmem.c */
	dshash_table_handle counts_handle;	/* twins per model and partition */
	LWLock		counts_lock;	/* makes a limit check and its increment one step */
	ConditionVariable progress_cv;	/* broadcast after each batch */
	/* the load at start (rebuild.c); under start_load_mutex */
	slock_t		start_load_mutex;
	DtStartLoad start_load;
	uint64		start_loaded;	/* bit p: partition p loaded, not taken yet */
	uint64		start_load_generation;	/* reload_generation it saw */
	Oid			start_load_extension;	/* whose twins it loaded */
	ConditionVariable start_load_cv;	/* broadcast when LOADING ends */
	pg_atomic_uint64 queue_generation;	/* DT_GENERATION_UNKNOWN: read the table */
	DtTwinTable twins;		/* its twins (twin_table.c) */
	DtWorkerSlot slots[FLEXIBLE_ARRAY_MEMBER];
} DtDatabase;

#ifdef pg_attribute_aligned
StaticAssertDecl(offsetof(DtDatabase, twins) % DT_STRIPE_SIZE == 0,
				 "the stripes of a database entry start a line");
#endif

typedef struct DtShared
{
	int			tranche_id;		/* for DSA and dshash partition locks */
	int			nworkers;		/* per database */
	int			ndatabases;
	Size		database_size;	/* of one DtDatabase with its slots */
	LWLock		lock;			/* assignment and state of the databases */
	pid_t		launcher_pid;
	Latch	   *launcher_latch;
	ConditionVariable launcher_cv;	/* broadcast when a database's state changed */
	bool		scanned;		/* the launcher has looked at every database */
	uint64		rescan_requests;	/* CREATE DATABASE asked for a look */
	uint64		rescans_done;	/* ... up to this request */
	Oid			reprobe_dboid;	/* probe this database again in that look */
	Oid			probe_dboid;	/* the database being probed ... */
	int			probe_result;	/* ... 1: has the extension, 2: has not */
	/* the DtDatabase entries follow, then the in-place DSA area */
} DtShared;

/* twin_table.c */
extern void dt_table_init(DtTwinTable *table, int tranche_id);
extern void dt_table_key(DtTableKey *key, int32 model_id, const char *twin_id,
						 int idlen);
extern DtTwinEntry *dt_table_find(dsa_area *area, DtTwinTable *table,
								  const DtTableKey *key, LWLockMode mode);
extern void dt_table_release(DtTwinTable *table, const DtTwinEntry *entry);
extern dsa_pointer dt_table_entry_alloc(dsa_area *area, const DtTableKey *key,
										const char *image, Size len);
extern bool dt_table_load(dsa_area *area, DtTwinTable *table, const DtTableKey *key,
						  const DtTwinEntry *header, const char *image, Size len,
						  dsa_pointer *chunk, dsa_pointer *replaced,
						  DtTwinEntry *old);
extern bool dt_table_reserve(dsa_area *area, DtTwinTable *table,
							 const DtTableKey *key);
extern void dt_table_unreserve(DtTwinTable *table, const DtTableKey *key);
extern dsa_pointer dt_table_link(dsa_area *area, DtTwinTable *table,
								 dsa_pointer chunk, DtTwinEntry *old);
extern dsa_pointer dt_table_unlink(dsa_area *area, DtTwinTable *table,
								   const DtTableKey *key, DtTwinEntry *old);
extern void dt_table_scan_init(DtTableScan *scan, dsa_area *area,
							   DtTwinTable *table, bool exclusive);
extern DtTwinEntry *dt_table_scan_next(DtTableScan *scan);
extern dsa_pointer dt_table_scan_unlink(DtTableScan *scan);
extern void dt_table_scan_end(DtTableScan *scan);
extern void dt_table_reset(dsa_area *area, DtTwinTable *table);

extern DtShared *dt_shared;
extern DtDatabase *dt_db;		/* this process's database, or NULL */

extern void dt_shmem_request(void);
extern void dt_shmem_startup(void);
extern DtDatabase *dt_database_entry(int index);
extern void dt_attach_store(void);
extern void dt_store_purge_database(void);
extern void dt_slot_clear(DtWorkerSlot *slot);
extern dsa_area *dt_area;

extern void dt_make_key(DtTwinKey *key, int32 model_id, const char *twin_id, int len);
extern const char *dt_entry_twin_id(const DtTwinEntry *entry);
extern void dt_store_scan_begin(DtTableScan *scan);
extern int	dt_partition_of(const char *twin_id, int len, int partitions);

/* loading and purging one worker's twins (worker start) */
extern void dt_store_purge_partition(int partition, int partitions);
extern void dt_store_load_twin(int32 model_id, const char *twin_id, int idlen,
							   const char *image, Size len, uint16 state_version,
							   int64 event_count, TimestampTz updated_at,
							   DtWorkerSlot *slot);
extern void dt_store_purge_models(int partition, int partitions,
								  bool (*is_live) (int32 model_id));

/* one batch's publication (see stage.c) */
extern void dt_store_quota_begin(void);
extern void dt_store_quota_check(int64 growth);
extern Size dt_store_twin_overhead(int id_len);
extern dsa_pointer dt_store_alloc_entry(const DtTwinKey *key, const char *image,
									   Size len);
extern void dt_store_reserve_entry(const DtTwinKey *key);
extern void dt_store_install(dsa_pointer entry,
							 uint16 state_version, int64 event_count,
							 TimestampTz updated_at, DtWorkerSlot *slot);
extern void dt_store_overwrite(const DtTwinKey *key, const char *image, Size len,
							   uint16 state_version, int64 event_count,
							   TimestampTz updated_at);
extern void dt_store_remove(const DtTwinKey *key, DtWorkerSlot *slot);
extern void dt_store_unreserve(const DtTwinKey *key);

/* twins per model (digitaltwin.max_twins_per_model) */
extern bool dt_twin_count_reserve(int32 model_id, int partition, int partitions,
								  int64 limit);
extern void dt_twin_count_add(int32 model_id, int partition, int64 delta);
extern void dt_twin_count_forget(int partition, bool (*is_live) (int32 model_id));

/* a worker's word on a model's events between commits (model_stats.c) */
typedef struct DtModelProgress
{
	int32		model_id;
	int64		in_flight;		/* applied by the batch in flight */
	int64		new_events;		/* to add to the rate's window */
} DtModelProgress;

/* ... and what a reader gets of it */
typedef struct DtModelLive
{
	int32		model_id;
	int32		partition;
	int64		twins;
	int64		in_flight;
	double		events_per_second;
} DtModelLive;

extern void dt_model_progress_publish(int partition, const DtModelProgress *progress,
									  int n);
extern int	dt_model_live_collect(DtModelLive **out);

/* a twin's entry, its stripe's lock held until dt_store_release() */
extern DtTwinEntry *dt_store_find(int32 model_id, const char *twin_id, int idlen);
extern void dt_store_release(DtTwinEntry *entry);

/* copy a twin's state image out of shared memory; false if absent */
extern bool dt_store_fetch(const DtTwinKey *key, MemoryContext cxt,
						   char **image, Size *len, int64 *event_count);

/* ----------------------------------------------------------------
 * databases.c: the database entry of this process, and the launcher's
 * answers (launcher.c)
 * ----------------------------------------------------------------
 */
extern void dt_database_set(DtDatabase *db);
extern DtDatabase *dt_database_take_locked(Oid dboid, const char *name);
extern DtDatabase *dt_database_current(void);
extern void dt_require_served(void);
extern char *dt_database_status_without_entry(void);
extern DtDatabase *dt_database_wait_served(TimestampTz deadline);
extern void dt_database_hold(Oid dboid);
extern void dt_database_mark_dropping(void);
extern Oid	dt_database_needed_alone(Node *parsetree);
extern void dt_launcher_wake(void);
extern void dt_launcher_rescan(void);

/* ----------------------------------------------------------------
 * model.c
 * ----------------------------------------------------------------
 */
typedef struct DtModel
{
	char		name[NAMEDATALEN];	/* hash key: must be first */
	int32		id;
	Oid			process;
	Oid			init;
	Oid			state_type;
	int16		typlen;
	bool		typbyval;
	bool		is_jsonb;
	bool		process_strict;
	bool		init_strict;
	Oid			owner;
	char	   *search_path;	/* pinned while its functions run */
	bool		broken;			/* a function is gone */
	int32		version;		/* digitaltwin.models.version (1.8) */
	int32		state_version;	/* ... and state_version: tags its images */
	bool		paused;			/* its events are held (lifecycle.c) */
	bool		log_events;		/* event_log_keep is set (history.c) */
	bool		keep_history;	/* history_keep is set (history.c) */
	FmgrInfo	process_fn;
	FmgrInfo	init_fn;
} DtModel;

extern Oid	dt_extension_oid(void);
extern Oid	dt_extension_relid(const char *relname);
extern Oid	dt_models_relid(void);
extern void dt_register_cache_callbacks(void);
extern bool dt_model_name_known(const char *name);	/* insert-side check */
extern bool dt_models_have_versions(void);
extern void dt_model_resolve(DtModel *m, MemoryContext cxt);
extern int	dt_models_paused;
extern int	dt_models_logging;
extern Oid	dt_check_process(Oid fn, bool *strict);
extern void dt_check_init(Oid fn, Oid state_type);
extern void dt_check_migrate(Oid fn, Oid old_type, Oid new_type);
extern bool dt_is_admin(Oid roleid);
extern void dt_model_lock_row(const char *name, const char *columns);
extern void dt_model_read_row(const char *name, const char *columns);
extern int64 dt_model_rows(const char *table, int32 model_id);

/* ----------------------------------------------------------------
 * rights.c: per-model rights
 * ----------------------------------------------------------------
 */
#define DT_RIGHT_SEND	0x01
#define DT_RIGHT_READ	0x02
#define DT_RIGHT_ADMIN	0x04	/* includes the other two */

extern const char *dt_right_name(int right);
extern int	dt_right_from_name(const char *name);
extern bool dt_may_all_models(Oid user, int right);
extern bool dt_model_allowed(const char *model, Oid user, int right);
extern struct HTAB *dt_model_ids_allowed(Oid user, int right);
extern void dt_check_model_owner(const char *name, Oid caller, Oid owner,
								 const char *action);
extern void dt_check_model_admin(const char *name, Oid caller, Oid owner,
								 const char *action);
extern Datum dt_model_admin_row(const char *name, Oid caller, const char *action);
extern void dt_check_model_send(const char *model);
extern char *dt_model_granted_to(Oid role);

/* cluster.c: a node's shard guard */
extern void dt_cluster_check_owner(const char *model, text *twin_id);
extern bool dt_cluster_owns(const char *twin_id);
extern int	dt_cluster_partition(text *twin_id, int modulus);
extern void dt_model_grants_drop_role(Oid role);

/* worker-side model cache (model.c) */
extern bool dt_models_refresh(bool force);
extern DtModel *dt_model_lookup(const char *name);
extern DtModel *dt_model_lookup_id(int32 model_id);
struct DtEvent;
extern bool dt_models_cover(struct DtEvent *events, int nevents);
extern bool dt_model_id_live(int32 model_id);
extern void dt_model_timeouts_init(void);
extern void dt_model_timeouts_disarm(void);
extern bool dt_model_call_timed_out(void);
extern int64 dt_model_stopped_event(void);
extern void dt_model_forget_session_state(void);
extern Datum dt_model_call(DtModel *model, bool init, int nargs,
						   Datum *args, bool *nulls, bool *isnull);

/* ----------------------------------------------------------------
 * queue.c
 * ----------------------------------------------------------------
 */
typedef struct DtEvent
{
	Oid			relid;			/* partition of digitaltwin.events holding it */
	ItemPointerData tid;
	int64		id;
	char	   *model;
	char	   *twin_id;
	Jsonb	   *payload;
	TimestampTz enqueued_at;
	TimestampTz event_time;		/* the application's time of the event */
	char	   *sender_model;	/* a message: the model and twin that sent it */
	char	   *sender_twin;	/* (NULL for an application's event) */
	int32		depth;			/* models' sends from event 0 to this one */
	char	   *timer;			/* a timer's fire: the timer's name */
	int32		timer_model_id; /* ... its model */
	TimestampTz timer_due;		/* ... and due time (relid is invalid) */
	int64		retry_of;		/* queued again by retry_dead_letters(): its
								 * original id (0: not a retry) */
	bool		dead;
	char	   *error;
	char	   *error_detail;	/* of a dead event: the rest of its error */
	char	   *error_hint;
	char	   *error_context;
	char		sqlstate[6];
} DtEvent;

extern Oid	dt_queue_partition_relid(uint64 generation);
extern void dt_queue_maintain(void);
extern void dt_queue_forget_generation(void);
extern void dt_event_check(const char *model, text *twin_id, Datum payload,
						   bool payload_isnull);

/* ----------------------------------------------------------------
 * fetch.c: the workers' reading and deleting of queued events
 * ----------------------------------------------------------------
 */
extern int	dt_fetch_events(int partition, int partitions, int limit,
							DtEvent **events);
extern void dt_delete_events(DtEvent *events, int nevents);

/* ----------------------------------------------------------------
 * stage.c: twin states of the current batch, in worker-local memory
 * ----------------------------------------------------------------
 */
typedef struct DtStagedTwin
{
	DtTwinKey	key;			/* hash key: must be first */
	DtModel    *model;
	const char *twin_id;
	bool		has_state;		/* false: new, or ended by the model */
	Datum		state;			/* never NULL when has_state */
	int64		event_count;
	bool		dirty;
	TimestampTz updated_at;
	/* prepared for publication */
	char	   *image;			/* state image (see dt_stage_persisted_value) */
	Size		image_len;
	dsa_pointer new_image;		/* its entry, prepared (dt_store_alloc_entry) */
	Size		new_len;
	bool		reserved_slot;	/* a slot promised to it (dt_store_reserve_entry) */
	bool		durable;		/* twin_state has its row (it was in shared memory) */
	Size		shared_len;		/* length of its image in shared memory, if durable */
	bool		overwrite;		/* publish by overwriting that image in place */
	bool		counted;		/* holds one unit of its model's twin count */
	bool		counted_at_start;	/* ... since before the batch */
} DtStagedTwin;

extern void dt_stage_begin(MemoryContext cxt, int partition);
extern void dt_stage_count_twin(DtStagedTwin *twin);
extern DtStagedTwin *dt_stage_get(DtModel *model, const char *twin_id);
extern void dt_stage_save_undo(DtStagedTwin *twin);
extern int	dt_stage_undo_mark(void);
extern void dt_stage_undo_to(int mark);
extern int	dt_stage_persist(void);
extern void dt_stage_prepare_publish(void);
extern void dt_stage_forget_plans(void);
extern Datum dt_stage_own_datum(Datum value, int16 typlen, bool typbyval);
extern void dt_stage_publish(DtWorkerSlot *slot);
extern void dt_stage_foreach_changed(void (*fn) (DtStagedTwin *twin, void *arg),
									 void *arg);
extern void dt_stage_abandon(void);
extern Size dt_state_image_size(Datum value, int16 typlen, bool typbyval);
extern void dt_state_image_write(char *dst, Datum value, int16 typlen, bool typbyval);
extern Datum dt_state_image_read(const char *src, Size len, int16 typlen, bool typbyval);
extern void dt_check_state(DtModel *model, Datum state);
extern bytea *dt_state_to_bytea(Datum value, int16 typlen, bool typbyval);


/* ----------------------------------------------------------------
 * durable.c: reading twin_state
 * ----------------------------------------------------------------
 */
typedef void (*dt_durable_fn) (void *arg, int32 model_id,
							   const char *twin_id, int idlen,
							   const char *image, Size len,
							   int64 event_count, TimestampTz updated_at);
extern void dt_durable_scan(int partition, int partitions, int32 model_id,
							dt_durable_fn fn, void *arg);
extern void dt_durable_load(int partition, int partitions,
							dt_durable_fn fn, void *arg);

/* ----------------------------------------------------------------
 * rebuild.c: partitions rebuilt from twin_state, the load at start
 * ----------------------------------------------------------------
 */
typedef enum DtRebuildRole
{
	DT_REBUILD_OWN,				/* load your own partition */
	DT_REBUILD_ALL,				/* load every partition: dt_rebuild_all() */
	DT_REBUILD_TAKEN			/* your partition was loaded for you */
} DtRebuildRole;

extern int64 dt_rebuild_partition(int partition, Oid extension);
extern DtRebuildRole dt_rebuild_role(int partition, uint64 generation,
									 Oid extension);
extern int64 dt_rebuild_all(int partition, uint64 generation, Oid extension,
							int64 *others);
extern int64 dt_rebuild_take(int partition, Oid extension);
extern void dt_rebuild_give_up(bool purge);

/* ----------------------------------------------------------------
 * lifecycle.c: versions, pause (the workers' side)
 * ----------------------------------------------------------------
 */
extern int	dt_hold_paused_events(struct DtEvent *events, int nevents);
extern void dt_hold_forget_plans(void);

/* ----------------------------------------------------------------
 * alerts.c
 * ----------------------------------------------------------------
 */
struct DtCurrentEvent
{
	DtModel    *model;
	DtEvent    *event;
};
typedef struct DtCurrentEvent DtCurrentEvent;

extern DtCurrentEvent *dt_current_event;	/* defined in util.c */
extern bool dt_migration_running;	/* util.c, set by lifecycle.c */
extern const char *dt_event_kind(const DtEvent *ev);	/* context.c */
extern uint64 dt_messages_sent;	/* messages sent by models (util.c) */

extern void dt_alerts_begin(MemoryContext cxt);
extern void dt_alerts_get(int i, const char **severity, const char **message,
						  Jsonb **details);
extern int	dt_alerts_mark(void);
extern void dt_alerts_undo_to(int mark);
extern void dt_alerts_each_model(void (*fn) (int32 model_id, void *arg), void *arg);
extern int	dt_alerts_flush(void);
extern void dt_alerts_announce(void);
extern void dt_alerts_abandon(void);
extern void dt_dead_letter(DtEvent *event);
extern void dt_log_dead_letter(const DtEvent *event);
extern void dt_alerts_forget_plans(void);

/* ----------------------------------------------------------------
 * timers.c: the partition's pending timers (worker-local index) and
 * what the current batch does to them
 * ----------------------------------------------------------------
 */
#define DT_TIMER_NAME_MAXLEN 63

extern void dt_timers_load(int partition, int partitions);
extern bool dt_timers_loaded(void);
extern void dt_timers_invalidate(void);
extern TimestampTz dt_timers_next_due(void);
extern int64 dt_timers_pending(void);
extern void dt_timers_purge_models(bool (*is_live) (int32 model_id));
extern void dt_timers_unpark(void);

/*
 * Timers of a rehearsal (rehearsal.c): set_timer() and cancel_timer() go to
 * the rehearsal's own timers, in event time, instead of the batch's.
 */
typedef struct DtTimerHooks
{
	void		(*set) (const DtEvent *ev, const char *name, const Interval *after,
						Jsonb *payload, const Interval *every);
	bool		(*cancel) (const DtEvent *ev, const char *name);
} DtTimerHooks;
extern const DtTimerHooks *dt_timer_hooks;
extern void dt_timers_begin(MemoryContext cxt);
extern int	dt_timers_undo_mark(void);
extern void dt_timers_undo_to(int mark);
extern void dt_timers_twin_ended(int32 model_id, const char *twin_id);
extern int	dt_timers_claim(TimestampTz now, int limit, DtEvent **events);
extern bool dt_timers_fire_begins(const DtEvent *ev);
extern void dt_timers_fire_failed(const DtEvent *ev);
extern void dt_timers_persist(void);
extern void dt_timers_publish(void);
extern void dt_timers_abandon(void);
extern void dt_timers_forget_plans(void);

/* ----------------------------------------------------------------
 * history.c and partitions.c: event log and state history
 * ----------------------------------------------------------------
 */
extern void dt_history_write(DtEvent *batch, int nbatch);
extern void dt_history_forget_plans(void);

/* ----------------------------------------------------------------
 * model_stats.c: statistics per model
 * ----------------------------------------------------------------
 */
extern void dt_model_stats_begin(int partition);
extern void dt_model_stats_applied(int32 model_id, double elapsed_ms);
extern void dt_model_stats_flush(DtEvent *batch, int n);
extern void dt_model_stats_committed(void);
extern void dt_model_stats_abandon(void);
extern void dt_model_stats_forget_plans(void);

/* twin_views.c: typed views of a model, dropped with it */
extern void dt_twin_views_drop(int32 model_id, const char *model);
extern void dt_log_partitions_maintain(void);

/* ----------------------------------------------------------------
 * outbox.c: commands to the data sources, staged like alerts
 * ----------------------------------------------------------------
 */
extern void dt_outbox_begin(MemoryContext cxt);
extern Jsonb *dt_outbox_get(int i);
extern int	dt_outbox_mark(void);
extern void dt_outbox_undo_to(int mark);
extern int	dt_outbox_flush(void);
extern void dt_outbox_announce(void);
extern void dt_outbox_abandon(void);
extern void dt_outbox_forget_plans(void);

/* ----------------------------------------------------------------
 * messages.c: send() inside a model, staged like alerts
 * ----------------------------------------------------------------
 */
extern void dt_messages_begin(MemoryContext cxt);
extern int	dt_messages_mark(void);
extern void dt_messages_undo_to(int mark);
extern int	dt_messages_flush(void);
extern void dt_messages_forget_plans(void);

/* ----------------------------------------------------------------
 * views.c: the columns of a live twin row (twin_entries(), live_twins)
 * ----------------------------------------------------------------
 */
#define DT_TWIN_COL_MODEL_ID	0
#define DT_TWIN_COL_TWIN_ID		1
#define DT_TWIN_COL_STATE		2
#define DT_TWIN_COL_EVENT_COUNT	3
#define DT_TWIN_COL_UPDATED_AT	4
#define DT_TWIN_NCOLS			5

/* one live twin, copied out of shared memory */
typedef struct DtLiveRow
{
	int32		model_id;
	int64		event_count;
	TimestampTz updated_at;
	text	   *twin_id;		/* NULL unless asked for */
	Jsonb	   *state;			/* NULL unless asked for */
} DtLiveRow;

typedef struct DtLiveRows
{
	DtLiveRow  *rows;
	int64		nrows;
	int64		size;
} DtLiveRows;

extern int64 dt_view_twin_count(void);
extern void dt_view_collect_twins(DtLiveRows *out, const bool *needed);
extern void dt_view_lookup_twin(DtLiveRows *out, const bool *needed,
								const char *twin_id, int idlen);
extern void dt_view_row_values(const DtLiveRow *row, const bool *needed,
							   Datum *values, bool *nulls);

/* ----------------------------------------------------------------
 * protect.c
 * ----------------------------------------------------------------
 */
extern void dt_install_utility_hook(void);
extern bool dt_model_owner_exists(Oid owner);
extern int32 dt_next_event_depth(void);

/* worker.c */
extern PGDLLEXPORT void digitaltwin_worker_main(Datum main_arg);

/* launcher.c */
extern PGDLLEXPORT void digitaltwin_launcher_main(Datum main_arg);
extern PGDLLEXPORT void digitaltwin_probe_main(Datum main_arg);
extern void dt_register_launcher(void);

#endif							/* DT_INTERNAL_H */
