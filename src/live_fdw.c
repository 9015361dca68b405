/*-------------------------------------------------------------------------
 *
 * live_fdw.c
 *	  The foreign data wrapper digitaltwin_live, behind the foreign table
 *	  digitaltwin.live_twins and so behind the view digitaltwin.twins.
 *
 * Version 1.0 read the live twins through a set-returning function.  A
 * function scan cannot know which columns its query uses, so every query
 * over the view copied every twin's id and state out of shared memory into
 * a tuplestore: at a million twins, SELECT count(*) spent most of its time
 * reading states it then threw away, from chunks scattered over the DSA
 * area (a cache and TLB miss each).  A foreign scan is told the columns its
 * query needs (the target list and the quals), and the planner can drop the
 * view's LEFT JOIN to digitaltwin.models, unique on id, when no model name
 * is used.  The foreign table also gives the planner a row estimate: the
 * number of twins the workers hold.
 *
 * Rows are copied in one pass over the shared hash into an array of the
 * used columns (views.c), at the first fetch, and returned from there: a
 * scan of the shared table holds a stripe's lock from one entry to the
 * next, and the executor must not run a query's expressions (user code)
 * while this backend holds an LWLock, nor sit in a nested loop with
 * interrupts held off.  The copy lets a rescan (the inner side of a nested
 * loop) return the same twins without a second pass; it is not bounded by
 * work_mem (about 40 bytes per twin, plus the ids and states used).
 *
 * A qual "twin_id = <expression not depending on the row>" (a constant, a
 * parameter of a prepared statement, an outer reference of a correlated
 * subquery) turns the pass over every twin into one hash lookup per model.
 * Every qual, that one included, is still evaluated by the executor on the
 * rows returned.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/reloptions.h"
#include "access/sysattr.h"
#include "catalog/pg_operator.h"
#include "catalog/pg_type.h"
#include "commands/explain.h"
#include "foreign/fdwapi.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "nodes/nodeFuncs.h"
#include "optimizer/clauses.h"
#include "optimizer/cost.h"
#include "optimizer/optimizer.h"
#include "optimizer/pathnode.h"
#include "optimizer/planmain.h"
#include "optimizer/restrictinfo.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

#include "dt_internal.h"

PG_FUNCTION_INFO_V1(digitaltwin_live_handler);
PG_FUNCTION_INFO_V1(digitaltwin_live_validator);

/* the columns of digitaltwin.live_twins, in order */
static const Oid dt_live_types[DT_TWIN_NCOLS] = {
	INT4OID, TEXTOID, JSONBOID, INT8OID, TIMESTAMPTZOID
};

typedef struct DtLiveScan
{
	bool		needed[DT_TWIN_NCOLS];
	MemoryContext cxt;			/* holds the rows, as long as the scan */
	ExprState  *twin_id;		/* the looked-up id, or NULL: every twin */
	bool		collected;		/* rows holds the twins */
	DtLiveRows	rows;
	int64		next;			/* next row to return */
} DtLiveScan;

/*
 * The planner's row count is the number of twins the workers hold.  Without
 * shared memory (not preloaded) it guesses; the scan itself will then
 * report the missing preload.
 */
static void
dt_live_rel_size(PlannerInfo *root, RelOptInfo *baserel, Oid foreigntableid)
{
	baserel->tuples = (dt_shared != NULL) ? dt_view_twin_count() : 1000;
	baserel->rows = baserel->tuples *
		clauselist_selectivity(root, baserel->baserestrictinfo, 0,
							   JOIN_INNER, NULL);
}

static bool
dt_live_is_twin_id(Node *node, RelOptInfo *baserel)
{
	Var		   *var;

	node = strip_implicit_coercions(node);
	if (!IsA(node, Var))
		return false;
	var = (Var *) node;
	return var->varno == baserel->relid && var->varlevelsup == 0 &&
		var->varattno == DT_TWIN_COL_TWIN_ID + 1;
}

/*
 * The other side of a qual "twin_id = x" where x does not depend on the
 * row (no Var of this level, nothing volatile), or NULL.  Equality under a
 * nondeterministic collation is not byte equality, which the hash lookup
 * is: such a qual is left to a full pass.
 */
static Expr *
dt_live_twin_id_qual(RelOptInfo *baserel)
{
	ListCell   *lc;

	foreach(lc, baserel->baserestrictinfo)
	{
		RestrictInfo *ri = lfirst_node(RestrictInfo, lc);
		OpExpr	   *op;
		Node	   *left;
		Node	   *right;

		if (!IsA(ri->clause, OpExpr))
			continue;
		op = (OpExpr *) ri->clause;
		if (op->opno != TextEqualOperator || list_length(op->args) != 2)
			continue;
		if (OidIsValid(op->inputcollid) &&
			!get_collation_isdeterministic(op->inputcollid))
			continue;
		left = linitial(op->args);
		right = lsecond(op->args);
		if (dt_live_is_twin_id(left, baserel) && is_pseudo_constant_clause(right))
			return (Expr *) right;
		if (dt_live_is_twin_id(right, baserel) && is_pseudo_constant_clause(left))
			return (Expr *) left;
	}
	return NULL;
}

/*
 * One path.  A full pass over shared memory happens before the first row
 * is returned, so it is all startup cost; reading the rows back is run
 * cost.  A lookup by twin id costs a hash probe per model.
 */
static void
dt_live_paths(PlannerInfo *root, RelOptInfo *baserel, Oid foreigntableid)
{
	Expr	   *twin_id = dt_live_twin_id_qual(baserel);
	Cost		startup;
	Cost		total;

	if (twin_id != NULL)
	{
		startup = baserel->baserestrictcost.startup + 10 * cpu_operator_cost;
		total = startup + baserel->rows *
			(cpu_tuple_cost + baserel->baserestrictcost.per_tuple);
	}
	else
	{
		startup = baserel->baserestrictcost.startup +
			baserel->tuples * (cpu_tuple_cost + baserel->baserestrictcost.per_tuple);
		total = startup + baserel->rows * cpu_tuple_cost;
	}
	add_path(baserel, (Path *)
			 create_foreignscan_path(root, baserel, NULL, baserel->rows,
									 startup, total, NIL, NULL, NULL,
									 twin_id ? list_make1(twin_id) : NIL));
}

/*
 * The columns the query reads, from the target list and the quals, as an
 * integer list of attribute numbers in fdw_private.  A whole-row reference
 * needs every column.  The path's fdw_private holds the expression of a
 * looked-up twin id, if any.
 */
static ForeignScan *
dt_live_plan(PlannerInfo *root, RelOptInfo *baserel, Oid foreigntableid,
			 ForeignPath *best_path, List *tlist, List *scan_clauses,
			 Plan *outer_plan)
{
	Bitmapset  *attrs = NULL;
	List	   *needed = NIL;
	AttrNumber	attno;

	scan_clauses = extract_actual_clauses(scan_clauses, false);
	pull_varattnos((Node *) baserel->reltarget->exprs, baserel->relid, &attrs);
	pull_varattnos((Node *) scan_clauses, baserel->relid, &attrs);
	for (attno = 1; attno <= DT_TWIN_NCOLS; attno++)
	{
		if (bms_is_member(attno - FirstLowInvalidHeapAttributeNumber, attrs) ||
			bms_is_member(0 - FirstLowInvalidHeapAttributeNumber, attrs))
			needed = lappend_int(needed, attno);
	}
	/* the looked-up id, if any, is evaluated at execution: fdw_exprs */
	return make_foreignscan(tlist, scan_clauses, baserel->relid,
							best_path->fdw_private, list_make1(needed),
							NIL, NIL, outer_plan);
}

/*
 * The scan fills in columns by position, so a foreign table of this server
 * must have exactly the columns of digitaltwin.live_twins.
 */
static void
dt_live_check_descriptor(Relation rel)
{
	TupleDesc	desc = RelationGetDescr(rel);
	int			i;
	bool		ok = (desc->natts == DT_TWIN_NCOLS);

	for (i = 0; ok && i < DT_TWIN_NCOLS; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		ok = !att->attisdropped && att->atttypid == dt_live_types[i];
	}
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_FDW_INCONSISTENT_DESCRIPTOR_INFORMATION),
				 errmsg("foreign table \"%s\" does not have the columns of digitaltwin.live_twins",
						RelationGetRelationName(rel)),
				 errdetail("A foreign table of server digitaltwin_live must have the columns (model_id integer, twin_id text, state jsonb, event_count bigint, updated_at timestamptz), in that order.")));
}

static void
dt_live_begin(ForeignScanState *node, int eflags)
{
	ForeignScan *plan = (ForeignScan *) node->ss.ps.plan;
	DtLiveScan *scan = palloc0(sizeof(DtLiveScan));
	ListCell   *lc;

	node->fdw_state = scan;
	dt_live_check_descriptor(node->ss.ss_currentRelation);
	foreach(lc, (List *) linitial(plan->fdw_private))
		scan->needed[lfirst_int(lc) - 1] = true;
	if (eflags & EXEC_FLAG_EXPLAIN_ONLY)
		return;
	dt_require_preload();
	scan->cxt = AllocSetContextCreate(node->ss.ps.state->es_query_cxt,
									  "digitaltwin live scan",
									  ALLOCSET_DEFAULT_SIZES);
	if (plan->fdw_exprs != NIL)
		scan->twin_id = ExecInitExpr((Expr *) linitial(plan->fdw_exprs),
									 (PlanState *) node);
}

/* Copy the twins the scan returns: all of them, or those with one id. */
static void
dt_live_collect(ForeignScanState *node, DtLiveScan *scan)
{
	MemoryContext old = MemoryContextSwitchTo(scan->cxt);

	if (scan->twin_id != NULL)
	{
		ExprContext *econtext = node->ss.ps.ps_ExprContext;
		bool		isnull;
		Datum		value = ExecEvalExpr(scan->twin_id, econtext, &isnull);

		if (isnull)
		{
			/* twin_id = NULL holds for no row */
			scan->rows.nrows = 0;
		}
		else
		{
			text	   *id = DatumGetTextPP(value);

			dt_view_lookup_twin(&scan->rows, scan->needed, VARDATA_ANY(id),
								VARSIZE_ANY_EXHDR(id));
		}
	}
	else
		dt_view_collect_twins(&scan->rows, scan->needed);
	scan->collected = true;
	scan->next = 0;
	MemoryContextSwitchTo(old);
}

static TupleTableSlot *
dt_live_iterate(ForeignScanState *node)
{
	DtLiveScan *scan = node->fdw_state;
	TupleTableSlot *slot = node->ss.ss_ScanTupleSlot;

	if (!scan->collected)
		dt_live_collect(node, scan);
	ExecClearTuple(slot);
	if (scan->next >= scan->rows.nrows)
		return slot;
	/* the values point into the rows, which live as long as the scan */
	dt_view_row_values(&scan->rows.rows[scan->next++], scan->needed,
					   slot->tts_values, slot->tts_isnull);
	return ExecStoreVirtualTuple(slot);
}

/*
 * A rescan of a full pass returns the same copy: one query sees one pass.
 * A lookup looks again, as its id may have changed (an outer reference).
 */
static void
dt_live_rescan(ForeignScanState *node)
{
	DtLiveScan *scan = node->fdw_state;

	scan->next = 0;
	if (scan->twin_id != NULL && scan->collected)
	{
		MemoryContextReset(scan->cxt);
		scan->collected = false;
	}
}

static void
dt_live_end(ForeignScanState *node)
{
	DtLiveScan *scan = node->fdw_state;

	if (scan != NULL && scan->cxt != NULL)
		MemoryContextDelete(scan->cxt);
}

/* EXPLAIN shows which columns the scan copies out of shared memory. */
static void
dt_live_explain(ForeignScanState *node, ExplainState *es)
{
	static const char *const names[DT_TWIN_NCOLS] = {
		"model_id", "twin_id", "state", "event_count", "updated_at"
	};
	DtLiveScan *scan = node->fdw_state;
	StringInfoData buf;
	int			i;

	initStringInfo(&buf);
	for (i = 0; i < DT_TWIN_NCOLS; i++)
	{
		if (!scan->needed[i])
			continue;
		if (buf.len > 0)
			appendStringInfoString(&buf, ", ");
		appendStringInfoString(&buf, names[i]);
	}
	ExplainPropertyText("Twin Columns", buf.len > 0 ? buf.data : "none", es);
	if (((ForeignScan *) node->ss.ps.plan)->fdw_exprs != NIL)
		ExplainPropertyText("Twin Lookup", "by twin_id", es);
}

Datum
digitaltwin_live_handler(PG_FUNCTION_ARGS)
{
	FdwRoutine *routine = makeNode(FdwRoutine);

	routine->GetForeignRelSize = dt_live_rel_size;
	routine->GetForeignPaths = dt_live_paths;
	routine->GetForeignPlan = dt_live_plan;
	routine->BeginForeignScan = dt_live_begin;
	routine->IterateForeignScan = dt_live_iterate;
	routine->ReScanForeignScan = dt_live_rescan;
	routine->EndForeignScan = dt_live_end;
	routine->ExplainForeignScan = dt_live_explain;
	PG_RETURN_POINTER(routine);
}

/* The wrapper, its server and its table take no options. */
Datum
digitaltwin_live_validator(PG_FUNCTION_ARGS)
{
	List	   *options = untransformRelOptions(PG_GETARG_DATUM(0));

	if (options != NIL)
		ereport(ERROR,
				(errcode(ERRCODE_FDW_INVALID_OPTION_NAME),
				 errmsg("invalid option \"%s\"",
						((DefElem *) linitial(options))->defname),
				 errhint("digitaltwin_live takes no options.")));
	PG_RETURN_VOID();
}

