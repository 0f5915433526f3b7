"""Several images planned together: layers on the regions of the fleet.

A *region* is the set of items held by exactly the same images (the same image mask). An item
can only be in a layer shared by images that all hold it, so a layer that mixes two regions is
a different layer in some image, its items stored twice; a fleet whose layers each lie inside
one region stores every item once (fleet overhead 1.0).

:func:`plan_jointly` optimises, in this order: (1) every image within its layer budget; (2) no
image's expected bytes shipped per random one-item update (the model of
:func:`~closurepack.strategies.economy.expected_shipped`: a layer ships when the changed item
lies in its down-set) above its plan alone, exactly, in integers; (3) the fewest bytes stored
twice; (4) the least expected update bytes, summed over the images. How:

1. *Atoms*: the items are split by region and, within it, by the layer each image holding them
   has them in when planned alone. Every image's atoms refine its plan alone, so none ships more
   per update than alone (splitting a layer never ships more: each part's down-set lies in the
   whole's). A second attempt starts from one atom per item (the cheapest layering of all,
   free to be merged along the fleet's regions rather than along each image's plan); of the
   two results and the images' plans alone, the one storing fewer bytes is kept (ties: the
   fewer expected bytes summed, then the first), so a fleet never stores more than alone.
   When that one still stores more than :data:`ACROSS_ABOVE` of the items twice, a fourth
   candidate is planned across regions (:func:`closurepack.fleetshare.plan_across`: layers
   of the union that may mix regions at the bytes that stores twice, each image repaired or
   given its plan alone where it would ship more than alone), kept on the same terms; this
   is what lets ``stable``'s images, whose plans alone leave no room for merges inside
   regions, share most of their layers.
2. While some image has more atoms than its budget, two atoms of one region are merged: of the
   regions that hold an image over budget, the pair whose merge adds the least expected bytes
   (``(s_a + s_b) |D(a | b)| - s_a |D(a)| - s_b |D(b)|``, over each holder's item count, summed
   over the holders, per image over budget that it helps; ties: the lower region mask, then the
   lower atoms), if every holder's expected bytes stay within its plan alone. A merge within a
   region keeps every layer whole in every image that holds it.
3. When no such merge is left, the image most over budget (ties: the lower) gets a copy of its
   own of its smallest shared atom (in bytes; ties: the lower): those items are then stored
   twice, the cheapest duplication first, the atom as it was (so no image ships more), now free
   to merge with the image's own atoms (across regions) at the cost of that image alone.
   An image with no shared atom left that still cannot merge gets its plan alone.
4. Atoms smaller than ``min_size`` bytes are merged, smallest first, into the atom of their
   region that adds the least expected bytes, within the same guarantee.
5. Layers are ordered bottom first by how many images hold them (most first), then by their
   lowest item in the union's topological order (dependencies first), so shared and stable
   layers sit at the bottom, as Docker's ChainID reuse wants.
6. When the candidate kept still stores some item twice (fleets of at most
   :data:`ADOPT_ITEMS` items), it and the images' plans alone are each improved by adoption
   (:func:`closurepack.fleetadopt.adopt_layers`: images take up the layers others store, each
   refitted within its budget and its cost alone), small atoms folded as in step 4, and the
   one storing the fewest bytes of the three is kept on the same terms.

Complexity: with ``A_R`` atoms ever in region ``R`` (an image's own region also receives the
copies of step 3), ``N`` items in the union and ``K`` images,
``O(sum_R A_R^2 (log A_R + N / 64) + A N)``: every pair of atoms of a region is costed once,
a merge costs the new atom against its region's others; the per-item attempt has ``A_R`` the
region's items. Quadratic in the largest region's items, then: real fleets (8 images, 500
items, 42 regions, the largest of 150 items) take about half a second beyond their plans alone,
and the across-regions candidate, when it runs (:data:`ACROSS_ABOVE`), seconds more (the
bench's 8 tuned base closures with ``stable`` at 100 layers: about 7 CPU s in all, 2.6 s of
them their plans alone, measured in session 17 at load 1.1); a single image never comes here.

:func:`fleet_floor` (:mod:`closurepack.fleetfloor`, importable from here) is the lower bound on
the bytes any plan of the images within the budget stores: see its docstring. The atoms and the
regions they lie on are kept by :mod:`closurepack.fleetregions`.
"""

from __future__ import annotations

from collections.abc import Sequence

from closurepack.fleetadopt import adopt_layers
from closurepack.fleetfloor import FleetFloor, fleet_floor
from closurepack.fleetregions import JointState, image_masks, mask_bits
from closurepack.fleetshare import plan_across
from closurepack.graph import Closure
from closurepack.strategies._dag import Dag

# fleet_floor and FleetFloor are defined in fleetfloor and importable from here too (README.md
# names closurepack.fleet.fleet_floor).
__all__ = ["ACROSS_ABOVE", "ADOPT_ITEMS", "FleetFloor", "fleet_floor", "plan_jointly"]

#: A fleet whose best plan of steps 1 to 4 stores more than this share of its items twice is
#: also planned across regions (:mod:`closurepack.fleetshare`).
ACROSS_ABOVE = 0.01
#: Fleets of up to this many distinct items are improved by adoption (step 6).
ADOPT_ITEMS = 3000


def plan_jointly(
    closures: Sequence[Closure],
    union: Closure,
    alone: Sequence[Sequence[tuple[str, ...]]],
    *,
    room: int,
    min_size: int = 0,
) -> list[list[tuple[str, ...]]]:
    """Each image's layers (bottom first) for ``closures`` planned together (module docstring);
    ``union`` is their union, ``alone[k]`` image ``k``'s layers planned alone (at most
    ``room``), ``room`` each image's layer budget."""
    dag = Dag.from_closure(union)
    masks = image_masks(closures)
    tries = [_attempt(dag, masks, alone, room, min_size, fine=fine) for fine in (False, True)]
    separate = JointState(dag, alone, room)  # each image its plan alone, if that stores less
    for k, layers in enumerate(alone):
        for layer in layers:
            separate.add(1 << k, [separate.index[p] for p in layer], pair=False)
    tries.append(separate)
    if min(joint.stored() for joint in tries) > sum(dag.sizes) * (1 + ACROSS_ABOVE):
        across = _across(dag, masks, alone, room, min_size)
        if across is not None:
            tries.append(across)
    best = min(tries, key=lambda joint: (joint.stored(), sum(joint.spent)))
    if best.stored() > sum(dag.sizes) and len(dag) <= ADOPT_ITEMS:
        starts = [best] if best is separate else [best, separate]
        tries = [
            _adopted(dag, closures, alone, room=room, min_size=min_size, start=start)
            for start in starts
        ]
        best = min([best, *tries], key=lambda joint: (joint.stored(), sum(joint.spent)))
    return best.layers(len(closures))


def _adopted(
    dag: Dag,
    closures: Sequence[Closure],
    alone: Sequence[Sequence[tuple[str, ...]]],
    *,
    room: int,
    min_size: int,
    start: JointState,
) -> JointState:
    """Step 6 of the module docstring: ``start`` after adoption, as a :class:`JointState`."""
    joint = JointState(dag, alone, room)
    downs = dag.down_bitsets()
    items = [frozenset(joint.index[p] for p in closure.items) for closure in closures]
    held: list[list[frozenset[int]]] = [[] for _ in closures]
    for atom in start.atoms.values():
        for k in mask_bits(atom.owner):
            held[k].append(frozenset(atom.members))
    found = adopt_layers(dag, downs, items=items, start=held, limits=joint.limit, room=room)
    owners: dict[frozenset[int], int] = {}
    for k, layers in enumerate(found):
        for layer in layers:
            owners[layer] = owners.get(layer, 0) | 1 << k
    for members in sorted(owners, key=sorted):
        joint.add(owners[members], sorted(members), pair=False)
    if min_size > 0:
        joint.fold_small(min_size)
    return joint


def _across(
    dag: Dag,
    masks: dict[str, int],
    alone: Sequence[Sequence[tuple[str, ...]]],
    room: int,
    min_size: int,
) -> JointState | None:
    """The fleet planned across regions (:func:`closurepack.fleetshare.plan_across`) from the
    atoms of step 1, as a :class:`JointState` for the comparison and the order of step 5."""
    joint = JointState(dag, alone, room)
    atoms: dict[tuple[int, ...], list[int]] = {}
    for i, path in enumerate(dag.paths):
        mask = masks[path]
        atoms.setdefault((mask, *(joint.where[k][i] for k in mask_bits(mask))), []).append(i)
    found = plan_across(
        dag,
        [masks[path] for path in dag.paths],
        [atoms[key] for key in sorted(atoms)],
        [[[joint.index[p] for p in layer] for layer in layers] for layers in alone],
        room,
    )
    if found is None:
        return None
    owners: dict[tuple[int, ...], int] = {}
    for k, layers in enumerate(found):
        for layer in layers:
            owners[tuple(layer)] = owners.get(tuple(layer), 0) | 1 << k
    for members in sorted(owners):
        joint.add(owners[members], list(members), pair=False)
    if min_size > 0:
        joint.fold_small(min_size)
    return joint


def _attempt(
    dag: Dag,
    masks: dict[str, int],
    alone: Sequence[Sequence[tuple[str, ...]]],
    room: int,
    min_size: int,
    *,
    fine: bool,
) -> JointState:
    """Steps 1 to 4 of the module docstring from the atoms of the plans alone, or (``fine``)
    from one atom per item."""
    joint = JointState(dag, alone, room)
    atoms: dict[tuple[int, ...], list[int]] = {}
    for i, path in enumerate(dag.paths):
        mask = masks[path]
        key = (mask, i) if fine else (mask, *(joint.where[k][i] for k in mask_bits(mask)))
        atoms.setdefault(key, []).append(i)
    for key in sorted(atoms):
        joint.add(key[0], atoms[key])
    while joint.over():
        if not joint.step():
            over = joint.over()
            excess = max(joint.count[k] for k in over)
            joint.split_off(next(k for k in over if joint.count[k] == excess))
    if min_size > 0:
        joint.fold_small(min_size)
    return joint
