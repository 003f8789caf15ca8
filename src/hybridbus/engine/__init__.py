"""The log behind one small interface (`engine.base.Engine`): memory and sqlite.

Concrete engines are chosen only by the app factory (`hybridbus.open`)."""
