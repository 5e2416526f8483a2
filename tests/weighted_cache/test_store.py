from weighted_cache.store import REMOVED, Entry, Store


def test_adding_an_entry_counts_its_cost():
    store = Store()
    store.add(Entry("a", 1, 5, 0.0))
    assert store.cost_used == 5
    assert list(store.data) == ["a"]


def test_removing_an_entry_returns_its_cost():
    store = Store()
    entry = Entry("a", 1, 5, 0.0)
    store.add(entry)
    store.remove(entry)
    assert store.cost_used == 0
    assert "a" not in store.data


def test_removing_a_stale_entry_leaves_the_current_one():
    store = Store()
    old = Entry("a", 1, 5, 0.0)
    store.add(old)
    store.remove(old)
    new = Entry("a", 2, 3, 0.0)
    store.add(new)
    store.remove(old)
    assert store.data["a"] is new
    assert store.cost_used == 3


def test_update_replaces_the_value_and_keeps_the_total_exact():
    store = Store()
    entry = Entry("a", 1, 5, 0.0)
    store.add(entry)
    store.update(entry, "new", 2)
    assert (entry.value, entry.cost) == ("new", 2)
    assert store.cost_used == 2


def test_clear_returns_everything_held():
    store = Store()
    for key in "abc":
        store.add(Entry(key, key, 1, 0.0))
    assert {e.key for e in store.clear()} == {"a", "b", "c"}
    assert store.cost_used == 0


def test_new_entries_belong_to_no_segment():
    assert Entry("a", 1, 1, 0.0).where == REMOVED


def test_entries_have_no_instance_dict():
    assert not hasattr(Entry("a", 1, 1, 0.0), "__dict__")
