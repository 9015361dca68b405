/*-------------------------------------------------------------------------
 *
 * cluster.c
 *	  The shard guard of a node of a cluster (issue 18).
 *
 * A coordinator routes each event to a node with PostgreSQL's own hash
 * partitioning of the twin id (digitaltwin.cluster_events, whose
 * partitions are postgres_fdw foreign tables of the nodes' queues; see the
 * 1.10 script).  A node owns the partitions listed in its
 * digitaltwin.cluster_shard, and refuses, in the events' CHECK (queue.c),
 * every event of a twin it does not own: a row inserted on the wrong node,
 * directly or by a stale route, can never start a second copy of a twin.
 *
 * The guard computes the partition exactly as PostgreSQL routes a row of
 * a table PARTITION BY HASH (twin_id) with twin_id text COLLATE "C": the
 * extended hash of the text with the partitioning seed, combined into a
 * row hash, modulo the modulus (partbounds.c, compute_partition_hash_value).
 * The coordinator's routing and the node's guard therefore agree by
 * construction; the cluster TAP test checks it on 100k routed events.
 *
 * The shard is cached per backend and dropped on a relcache invalidation:
 * a plain write queues none, so a statement trigger on cluster_shard
 * (dt_cluster_shard_changed below) queues one for every change, whoever
 * makes it (the coordinator through postgres_fdw, a DBA, pg_restore).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/partition.h"
#include "commands/trigger.h"
#include "catalog/pg_collation.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"

#include "dt_internal.h"

PG_FUNCTION_INFO_V1(digitaltwin_cluster_partition_of);
PG_FUNCTION_INFO_V1(digitaltwin_cluster_shard_changed);

static bool shard_valid = false;
static bool callback_registered = false;
static uint64 shard_generation = 0;	/* bumped by every invalidation */
static Oid	shard_relid = InvalidOid;
static int	shard_modulus = 0;	/* 0: owns no partition */
static bool shard_named = false;	/* a node of a cluster (it has a name) */
static bool *shard_owned = NULL;	/* [modulus], in TopMemoryContext */

static void
dt_cluster_shard_invalidate(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == shard_relid)
	{
		shard_valid = false;
		shard_generation++;
	}
}

/* The hash partition of a twin id, as PostgreSQL routes it. */
int
dt_cluster_partition(text *twin_id, int modulus)
{
	uint64		hash;

	hash = DatumGetUInt64(DirectFunctionCall2Coll(hashtextextended, C_COLLATION_OID,
												  PointerGetDatum(twin_id),
												  UInt64GetDatum(HASH_PARTITION_SEED)));
	return (int) (hash_combine64(0, hash) % (uint64) modulus);
}

/*
 * Read the shard.  The cache is marked valid only once a load has
 * succeeded with no invalidation during it, so that a failed load (a
 * cancel, a timeout) leaves it to be read again rather than a guard that
 * lets everything through; and it is read with a snapshot taken now, not
 * the statement's (postgres_fdw's remote sessions are REPEATABLE READ: an
 * older snapshot would miss the change whose invalidation it consumed).
 */
static void
dt_cluster_shard_load(void)
{
	DtTrustedScope scope;
	uint64		generation;
	int			modulus = 0;
	bool	   *owned = NULL;
	bool		named = false;
	uint64		i;

	if (!callback_registered)
	{
		CacheRegisterRelcacheCallback(dt_cluster_shard_invalidate, (Datum) 0);
		callback_registered = true;
	}
	AcceptInvalidationMessages();
	generation = shard_generation;
	if (dt_table_exists("cluster_shard"))
	{
		shard_relid = dt_extension_relid("cluster_shard");
		dt_trusted_enter(&scope);
		dt_spi_read_latest("SELECT 1 FROM digitaltwin.cluster_node_name");
		named = SPI_processed > 0;
		dt_spi_read_latest("SELECT modulus, remainder FROM digitaltwin.cluster_shard "
						   "ORDER BY modulus");
		for (i = 0; i < SPI_processed; i++)
		{
			bool		isnull;
			int			m = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i],
														SPI_tuptable->tupdesc, 1, &isnull));
			int			r = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i],
														SPI_tuptable->tupdesc, 2, &isnull));

			if (owned == NULL)
			{
				modulus = m;
				owned = MemoryContextAllocZero(TopMemoryContext, sizeof(bool) * m);
			}
			/* one modulus per cluster: a row of another is not this cluster's */
			if (m == modulus)
				owned[r] = true;
		}
		dt_trusted_leave(&scope);
	}
	if (shard_owned != NULL)
		pfree(shard_owned);
	shard_owned = owned;
	shard_modulus = modulus;
	shard_named = named;
	shard_valid = (generation == shard_generation);
}

/*
 * Whether this node owns a twin: true when it is not a node of a cluster;
 * false, with *partition -1, when it is one that owns no partition yet.
 * Cheap when the node is not in a cluster (one flag) and when it is (one
 * hash).
 */
static bool
dt_cluster_owns_text(text *twin_id, int *partition)
{
	if (!shard_valid)
		dt_cluster_shard_load();
	*partition = -1;
	if (shard_modulus == 0)
		return !shard_named;
	*partition = dt_cluster_partition(twin_id, shard_modulus);
	return shard_owned[*partition];
}

/* The guard: refuse an event whose twin this node does not own. */
void
dt_cluster_check_owner(const char *model, text *twin_id)
{
	int			partition;

	if (dt_cluster_owns_text(twin_id, &partition))
		return;
	ereport(ERROR,
			(errcode(ERRCODE_CHECK_VIOLATION),
			 errmsg("twin \"%s\" of model \"%s\" belongs to another node",
					text_to_cstring(twin_id), model),
			 partition < 0 ?
			 errdetail("This node of a cluster owns no partition yet.") :
			 errdetail("Its twin id is in cluster partition %d (modulus %d), which this node does not own.",
					   partition, shard_modulus),
			 errhint("Send events through digitaltwin.cluster_events on the coordinator.")));
}

/*
 * The same for a worker about to fire a timer: while
 * cluster_move_partition() moves a partition away, its twins' timers must
 * not fire here, where the twin is about to be deleted, and there, where
 * it is being copied.
 */
bool
dt_cluster_owns(const char *twin_id)
{
	text	   *t;
	int			partition;
	bool		owned;

	/* off a cluster, no text made for every timer */
	if (shard_valid && shard_modulus == 0 && !shard_named)
		return true;
	t = cstring_to_text(twin_id);
	owned = dt_cluster_owns_text(t, &partition);
	pfree(t);
	return owned;
}

/* cluster_partition_of(twin_id, modulus): the partition the twin is in. */
Datum
digitaltwin_cluster_partition_of(PG_FUNCTION_ARGS)
{
	int32		modulus = PG_GETARG_INT32(1);

	if (modulus <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("modulus must be positive")));
	PG_RETURN_INT32(dt_cluster_partition(PG_GETARG_TEXT_PP(0), modulus));
}

/*
 * AFTER statement trigger on cluster_shard: postgres_fdw's remote writes
 * queue no relcache invalidation of the table, so the trigger queues one,
 * and every backend of the node reloads its shard at its next event.
 */
Datum
digitaltwin_cluster_shard_changed(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("digitaltwin.cluster_shard_changed() must be fired as a trigger")));
	CacheInvalidateRelcacheByRelid(RelationGetRelid(trigdata->tg_relation));
	return PointerGetDatum(NULL);
}
